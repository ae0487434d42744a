"""Resume: `python -m alpaca_training` killed (SIGKILL) after a checkpoint, then started again,
continues after the newest complete checkpoint and finishes with final/."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

from alpaca_training.output import find_resume_checkpoint
from tests.training.conftest import PYTHON, make_config, subprocess_env

STEP_RE = re.compile(r"step=(\d+)/(\d+)")
RESUME_RE = re.compile(r"resuming from \S*checkpoint-(\d+)")


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "alpaca_training"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_killed_run_resumes_after_its_checkpoint(
    tiny_llama: Path, data_dir: Path, tmp_path: Path
):
    out = tmp_path / "out"
    # 6 steps per epoch x 15 epochs = 90 steps, a checkpoint every 2 steps
    config = make_config(
        tiny_llama, data_dir, out, saveSteps=2, keepCheckpoints=2, hyperparameters={"epochs": 15}
    )
    env = subprocess_env(config, tmp_path)

    first_log = tmp_path / "first.log"
    proc = _start(env, first_log)
    try:
        deadline = time.monotonic() + 120
        while (seen := find_resume_checkpoint(out / "checkpoints")) is None:
            assert proc.poll() is None, first_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen_step = int(seen.name.split("-")[1])
    first_steps = [int(m.group(1)) for m in STEP_RE.finditer(first_log.read_text())]
    total = int(STEP_RE.search(first_log.read_text()).group(2))
    assert not (out / "final").exists()
    assert first_steps[-1] < total, "the first run finished before the kill"

    second_log = tmp_path / "second.log"
    proc = _start(env, second_log)
    try:
        assert proc.wait(timeout=300) == 0, second_log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = second_log.read_text()
    resumed = int(RESUME_RE.search(text).group(1))
    second_steps = [int(m.group(1)) for m in STEP_RE.finditer(text)]
    print(
        f"first run: steps 1..{first_steps[-1]} logged, killed with checkpoint-{seen_step} "
        f"complete; second run: resumed from checkpoint-{resumed}, steps "
        f"{second_steps[0]}..{second_steps[-1]} of {total}"
    )
    assert first_steps[0] == 1
    assert resumed >= seen_step
    assert second_steps[0] == resumed + 1 > seen_step  # continues; does not restart at 1
    assert second_steps == list(range(resumed + 1, total + 1))
    assert (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "progress.json").read_text())["step"] == total
    assert len(list((out / "checkpoints").glob("checkpoint-*"))) == 2  # keepCheckpoints
