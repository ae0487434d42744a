"""Fills from the Hugging Face Hub API (a local imitation through HF_ENDPOINT), S3 (moto's
server) and a local folder; their failures as reasons."""

from __future__ import annotations

import json

from alpaca_dev.fileserver import COMMIT
from alpaca_weights import cli, errors
from tests.weights.helpers import no_marker, read_term, same_tree


def run(term, dest, source, *extra):
    args = ["--termination-log", str(term), "fill", "--source", source, "--dest", str(dest)]
    return cli.main([*args, "--backoff", "0.05", *extra])


def test_hf_repo_through_hf_endpoint(hub, tmp_path, term_log, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "cache"
    assert run(term_log, dest, "hf://acme/tiny", "--revision", "main") == 0
    assert same_tree(hub.hub["acme/tiny"], dest)
    resolved = {p for m, p, _ in hub.requests if "/resolve/" in p}
    assert all(f"/resolve/{COMMIT}/" in p for p in resolved)  # pinned to the listed commit
    assert ("GET", "/api/models/acme/tiny/revision/main", None) in hub.requests


def test_hf_file_differing_from_its_lfs_sha256_is_a_checksum_mismatch(
    hub, tmp_path, term_log, monkeypatch
):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    shard = hub.hub["acme/tiny"] / "model-00002-of-00002.safetensors"
    # The API lists the true sha256; the bytes served are corrupted in one place.
    original = shard.read_bytes()
    corrupted = bytearray(original)
    corrupted[12345] ^= 0xFF

    import alpaca_dev.fileserver as servers

    real = servers._hub_siblings
    monkeypatch.setattr(servers, "_hub_siblings", lambda folder: _with(real(folder), original))
    shard.write_bytes(bytes(corrupted))
    dest = tmp_path / "cache"
    assert run(term_log, dest, "hf://acme/tiny") == errors.EXIT_PERMANENT
    message = read_term(term_log)
    assert message.startswith("ChecksumMismatch: model-00002-of-00002.safetensors: sha256 ")
    assert no_marker(dest)
    assert not (dest / ".alpaca/staging/model/model-00002-of-00002.safetensors.part").exists()


def _with(siblings, original):
    import hashlib

    for entry in siblings:
        if entry["rfilename"] == "model-00002-of-00002.safetensors":
            entry["lfs"]["sha256"] = hashlib.sha256(original).hexdigest()
    return siblings


def test_hf_token_is_sent_and_its_absence_is_unauthorized(hub, tmp_path, term_log, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.token = "s3cret"
    assert run(term_log, tmp_path / "a", "hf://acme/tiny") == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("Unauthorized: ")
    monkeypatch.setenv("HF_TOKEN", "s3cret")
    assert run(term_log, tmp_path / "b", "hf://acme/tiny") == 0


def test_hf_unknown_repo_is_source_not_found(hub, tmp_path, term_log, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert run(term_log, tmp_path / "c", "hf://acme/nothing") == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("SourceNotFound: ")


def test_s3_prefix_from_moto_server(moto_s3, tmp_path, term_log):
    dest = tmp_path / "cache"
    assert run(term_log, dest, "s3://weights/tiny") == 0
    assert same_tree(tmp_path / "s3src", dest)
    manifest = json.loads((dest / ".alpaca" / "manifest.json").read_text())
    assert len(manifest["files"]) == 4


def test_s3_missing_bucket_is_source_not_found(moto_s3, tmp_path, term_log):
    assert run(term_log, tmp_path / "c", "s3://no-such-bucket/x") == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("SourceNotFound: ")


def test_local_folder_and_unsupported_scheme(served, tmp_path, term_log):
    dest = tmp_path / "cache"
    assert run(term_log, dest, str(served.root / "models" / "tiny")) == 0
    assert same_tree(served.root / "models" / "tiny", dest)
    assert run(term_log, tmp_path / "d", "ftp://host/x") == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("InvalidSource: ")


def test_credentials_appear_in_no_output(
    hub, served, moto_s3, tmp_path, term_log, monkeypatch, capfd, caplog
):
    """Real credentials for the local Hub, HTTP and S3 servers, right and wrong: none of them is
    in the CLI's output, its termination message (which becomes the status) or the cache's
    own files (issue 13 item 6)."""
    right = {
        "HF_TOKEN": "hf_sweepSentinelRight7Kq",
        "HTTP_AUTHORIZATION": "Bearer http-sweep-sentinel-right",
        "AWS_SECRET_ACCESS_KEY": "aws-sweep-sentinel-right",
    }
    wrong = {
        "HF_TOKEN": "hf_sweepSentinelWrong3Zt",
        "HTTP_AUTHORIZATION": "Bearer http-sweep-sentinel-wrong",
    }
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.token = right["HF_TOKEN"]
    served.token = right["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", right["AWS_SECRET_ACCESS_KEY"])
    http = f"{served.url}/models/tiny/"
    said = []
    for n, (env, source, code) in enumerate(
        [
            (right, "hf://acme/tiny", 0),
            (wrong, "hf://acme/tiny", errors.EXIT_PERMANENT),
            (right, http, 0),
            (wrong, http, errors.EXIT_PERMANENT),
            (right, "s3://weights/tiny", 0),
            (right, "s3://no-such-bucket/x", errors.EXIT_PERMANENT),
        ]
    ):
        for key in ("HF_TOKEN", "HTTP_AUTHORIZATION"):
            monkeypatch.setenv(key, env[key])
        dest = tmp_path / f"cache-{n}"
        assert run(term_log, dest, source) == code, source
        said.append(read_term(term_log) if code else "")
        said += [
            p.read_text(errors="replace")
            for p in dest.rglob("*")
            if p.is_file() and p.stat().st_size < 1_000_000
        ]
    out = capfd.readouterr()
    said += [out.out, out.err, caplog.text]
    secrets = [*right.values(), *wrong.values()]
    assert [s for s in secrets for text in said if s in text] == []
    assert any(text.startswith("Unauthorized: ") for text in said)  # the wrong ones were refused
