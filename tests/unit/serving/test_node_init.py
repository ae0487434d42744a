"""The replica starts its engine from the cache folder without Ray's per-node fetch task, and
names a folder that is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alpaca_serving.config import ServingConfig

pytest.importorskip("ray.serve.llm")


def _callback(model_path: Path):
    """The callback Ray creates in the replica, from the LLMConfig our app builds (no Ray
    cluster: creating it needs no placement group until asked for one)."""
    from ray.llm._internal.common.utils.import_utils import load_class

    from alpaca_serving.app import llm_config
    from alpaca_serving.node_init import LocalWeights

    config = ServingConfig(model_path=str(model_path), served_model_name="m", accelerator="cpu")
    llm = llm_config(config)
    cls = load_class(llm.callback_config.callback_class)
    assert cls is LocalWeights
    return cls(llm_config=llm, ctx_kwargs={"run_init_node": True})


def test_a_filled_folder_skips_the_fetch_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    callback = _callback(tmp_path / "m")
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is False
    assert (tmp_path / "torch" / "kernels").is_dir()  # what the skipped task also made


@pytest.mark.parametrize("filled", [False, True], ids=["no-folder", "empty-folder"])
def test_a_missing_model_is_named(tmp_path: Path, filled: bool):
    if filled:
        (tmp_path / "m").mkdir()
    callback = _callback(tmp_path / "m")
    with pytest.raises(Exception, match="cache volume is not mounted here or not filled") as err:
        asyncio.run(callback.run_callback("on_before_node_init"))
    assert str(tmp_path / "m") in str(err.value)
    assert ("has no config.json" if filled else "does not exist") in str(err.value)
    assert callback.ctx.run_init_node is True
