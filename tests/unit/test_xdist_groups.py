"""`make test` relies on pytest-xdist's loadgroup: every serving test on one worker (one Ray
app), every node test on one worker (one node). A pytest that xdist cannot rename items in
(pytest 9.2 with xdist 3.8) makes it split the groups without a word; this catches that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULE = """
import os, pytest
pytestmark = pytest.mark.xdist_group("heavy")

@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    print("WORKER", os.environ["PYTEST_XDIST_WORKER"])
"""


def test_a_group_runs_on_one_worker(tmp_path: Path):
    (tmp_path / "test_grouped.py").write_text(MODULE)
    (tmp_path / "test_other.py").write_text("def test_a(): pass\ndef test_b(): pass\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-s"),
            *("-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"), str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    grouped = [
        line for line in done.stdout.splitlines() if "test_grouped" in line and "PASSED" in line
    ]
    assert len(grouped) == 6
    assert len({line.split()[0] for line in grouped}) == 1, grouped  # one [gwN] for all six
