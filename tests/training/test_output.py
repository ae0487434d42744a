"""The output folder: which checkpoint a restart resumes from, and the final folder's swap."""

from __future__ import annotations

import json
from pathlib import Path

from alpaca_training.output import find_resume_checkpoint, is_complete, replace_dir


def _checkpoint(root: Path, step: int, *files: str, state: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_the_newest_complete_checkpoint_wins(tmp_path: Path):
    root = tmp_path / "checkpoints"
    _checkpoint(root, 2, "model.safetensors", "optimizer.pt")
    best = _checkpoint(root, 10, "adapter_model.safetensors")
    _checkpoint(root, 12, "model.safetensors", state=False)  # killed before trainer_state.json
    _checkpoint(root, 14, "optimizer.pt")  # no weights
    torn = _checkpoint(root, 16, "model.safetensors")
    (torn / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    wrong = _checkpoint(root, 18, "model.safetensors")
    (wrong / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    _checkpoint(root, 9, "model.safetensors")  # 9 < 10: numeric order, not by name
    (root / "checkpoint-20.tmp").mkdir()
    (root / "notes").mkdir()
    assert find_resume_checkpoint(root) == best


def test_sharded_weights_must_all_be_there(tmp_path: Path):
    folder = _checkpoint(tmp_path, 4, "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not is_complete(folder)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert is_complete(folder)


def test_no_checkpoints(tmp_path: Path):
    assert find_resume_checkpoint(tmp_path / "missing") is None
    _checkpoint(tmp_path, 3, state=False)
    assert find_resume_checkpoint(tmp_path) is None


def test_replace_dir_swaps_the_final_folder(tmp_path: Path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "old").write_text("old")
    new = tmp_path / ".final.tmp"
    new.mkdir()
    (new / "model").write_text("new")
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
