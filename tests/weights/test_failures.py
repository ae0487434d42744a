"""A full volume, a read-only volume and an unwritable folder: clear reasons, no marked cache.
Two fills of one cache at once: one downloads, the other waits and reuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_weights import cli, errors
from tests.weights.helpers import TOTAL, no_marker, read_term, same_tree

REPO = Path(__file__).resolve().parents[2]


def run(term, dest, source, *extra):
    args = ["--termination-log", str(term), "fill", "--source", source, "--dest", str(dest)]
    return cli.main([*args, "--backoff", "0.05", *extra])


def test_full_volume_is_no_space_left(served, mount_tmpfs, term_log):
    dest = mount_tmpfs("small", "size=1m")
    code = run(term_log, dest, f"{served.url}/models/tiny/", "--workers", "1")
    assert code == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("NoSpaceLeft: no space left writing ")
    assert no_marker(dest)


def test_read_only_volume_is_permission_denied(served, mount_tmpfs, term_log):
    dest = mount_tmpfs("ro", "size=1m,ro")
    assert run(term_log, dest, f"{served.url}/models/tiny/") == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("PermissionDenied: cannot write ")
    assert no_marker(dest)


def test_folder_of_another_user_is_permission_denied(served, tmp_path, term_log):
    """The fill without the power to override file modes (as in a pod), on a folder it does
    not own (mode 0755, another user): EACCES, reported as PermissionDenied."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop the file-mode override capability")
    dest = tmp_path / "cache"
    dest.mkdir(mode=0o755)
    os.chown(dest, 65534, 65534)
    caps = "-dac_override,-dac_read_search"
    done = subprocess.run(
        [
            *(setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable),
            *("-m", "alpaca_weights.cli", "--termination-log", str(term_log)),
            *("fill", "--source", f"{served.url}/models/tiny/", "--dest", str(dest)),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == errors.EXIT_PERMANENT, done.stderr
    assert read_term(term_log).startswith("PermissionDenied: cannot write ")
    assert no_marker(dest)


def test_two_fills_of_one_cache_download_once(served, tmp_path):
    dest = tmp_path / "cache"
    served.faults.delay = 0.15  # the first fill takes about two seconds
    cmd = [sys.executable, "-m", "alpaca_weights.cli"]
    fill = ["fill", "--source", f"{served.url}/models/tiny/", "--dest", str(dest)]
    procs = []
    for i in range(2):
        term = tmp_path / f"term-{i}"
        procs.append(
            subprocess.Popen(
                [*cmd, "--termination-log", str(term), *fill],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        time.sleep(1.0)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    messages = sorted(read_term(tmp_path / f"term-{i}").split(":")[0] for i in range(2))
    assert messages == ["Filled", "Reused"]
    assert any("another fill holds" in out for out in outputs)
    assert served.bytes_sent == TOTAL
    assert same_tree(served.root / "models" / "tiny", dest)
