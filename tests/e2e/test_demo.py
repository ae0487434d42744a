"""`make demo`'s main job, as CI runs it: a fresh control plane, the operator, the local
runtime, examples/alpaca-local.yaml Ready, and SmolLM2-135M-Instruct answering a chat request
through the Ray Serve app the RayService describes. Nothing is left running or behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_dev.runtime import engine_shm_files
from tests.conftest import k8s_bin_dir, thirdparty_crd_dir

pytestmark = [pytest.mark.e2e, pytest.mark.serving, pytest.mark.xdist_group("serving")]
REPO = Path(__file__).resolve().parents[2]


def _demo_folders() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith(("alpaca-demo-", "alpaca-rt-"))}


def test_demo_serves_smollm2_and_answers():
    shm, folders = engine_shm_files(), _demo_folders()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "alpaca_dev.demo", "--once", "--repo", str(REPO)),
            *("--bin-dir", str(k8s_bin_dir()), "--thirdparty-crds", str(thirdparty_crd_dir())),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO,
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "alpacamodel.alpaca.dev/smollm2 created" in out
    assert "Job weights-smollm2-135m-instruct-" in out and "succeeded: Filled: " in out
    ready_row = next(line for line in out.splitlines() if line.startswith("smollm2 "))
    assert ready_row.split()[1:3] == ["Ready", "1/1"]
    assert "http://smollm2-openai.default.svc:8000" in ready_row
    for condition in ("CapacityReady=True", "WeightsReady=True", "ServingReady=True", "Ready=True"):
        assert condition in out
    answer = next(line for line in out.splitlines() if "assistant:" in line)
    assert "Paris" in answer
    assert engine_shm_files() <= shm and _demo_folders() <= folders
