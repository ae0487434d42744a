"""Fixtures of the weights tests: model folders, real servers on 127.0.0.1, tiny Llamas, mounts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca_dev.fileserver import FileServer
from tests.weights import tiny
from tests.weights.helpers import write_model


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FileServer]:
    """A folder `models/tiny/` served over HTTP with Range support (faults set per test)."""
    root = tmp_path / "www"
    write_model(root / "models" / "tiny")
    with FileServer(root) as server:
        yield server


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FileServer]:
    """A Hugging Face Hub imitation serving repo `acme/tiny` (model info API + resolve)."""
    folder = write_model(tmp_path / "hub" / "acme" / "tiny")
    with FileServer(tmp_path / "hub", hub={"acme/tiny": folder}) as server:
        yield server


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on a free port, bucket `weights` holding `tiny/` (the same model files)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _host, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="weights")
        folder = write_model(tmp_path / "s3src")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), "weights", f"tiny/{path.relative_to(folder).as_posix()}")
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> tiny.Llamas:
    return tiny.build(tmp_path_factory.mktemp("llamas"))


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator:
    """Mount small tmpfs volumes under tmp_path (root only; skipped elsewhere); unmounted after."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def term_log(tmp_path: Path) -> Path:
    return tmp_path / "termination-log"
