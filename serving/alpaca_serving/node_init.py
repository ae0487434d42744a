"""Ray Serve LLM's node initialization, for weights that are already on the node's disk.

Before a replica starts its engine, Ray Serve LLM runs one task on every node of the replica's
placement group to fetch the model (`initialize_node`). Our model is always a folder on the
shared cache volume, filled and verified by the fill Job before the RayService exists, so that
task fetches nothing: it starts a Ray worker process on each node (with the replica's runtime
env, importing torch and transformers) only to return the path it was given. On this 2-core
machine that was 44 s of a tiny model's 2-minute replica start, on every scale-up, scale from
zero and restart. This callback (Ray's own hook, `LLMConfig.callback_config`) skips it, and
checks instead, on the replica's node, that the folder is there: a cache volume that is not
mounted or not filled is named in the replica's error instead of vLLM's misleading
"Repo id must be in the form 'repo_name'" (it takes a missing folder for a Hub id).
"""

from __future__ import annotations

import os
from pathlib import Path

from ray.llm._internal.common.callbacks.base import CallbackBase

CALLBACK_CLASS = f"{__name__}.LocalWeights"
"""What `LLMConfig.callback_config.callback_class` names (loaded in the replica's process)."""


class MissingWeights(RuntimeError):
    """The model folder is not on the replica's node."""


def check_model_folder(path: str) -> None:
    """The folder must hold a Hugging Face model (its config.json) where the engine runs."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        what = "has no config.json" if folder.is_dir() else "does not exist"
        raise MissingWeights(
            f"the model folder {path} {what} on this node ({os.uname().nodename}): the weights "
            "cache volume is not mounted here or not filled"
        )


class LocalWeights(CallbackBase):
    """Starts the engine from the local model folder without Ray's per-node fetch task."""

    async def on_before_node_init(self) -> None:
        check_model_folder(str(self.llm_config.model_loading_config.model_source))
        self.ctx.run_init_node = False
        # The one other thing the skipped task did on the node: torch's kernels folder, which
        # torch cannot create itself when its parent is missing (Ray's workaround, kept).
        import torch

        os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
