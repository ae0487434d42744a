"""torchrun with two CPU processes (DDP over gloo) trains and writes final/."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.training.conftest import PYTHON, make_config, subprocess_env

TORCHRUN = Path(PYTHON).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tiny_llama: Path, data_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    # global batch 4 = 2 per process x 2 processes: no accumulation, 6 steps for one epoch
    config = make_config(tiny_llama, data_dir, out, saveSteps=3, hyperparameters={"epochs": 1})
    env = subprocess_env(config, tmp_path)
    result = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc-per-node=2",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            "-m",
            "alpaca_training",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "method full, 2 process(es), CPU, 1 gradient accumulation step(s)" in log
    assert "step=6/6" in log
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    # 6 steps of 2 examples per process covered the 24 examples once: two processes took part
    assert (state["global_step"], state["epoch"], state["train_batch_size"]) == (6, 1.0, 2)
    final = out / "final"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    assert not list(out.glob(".final*"))
