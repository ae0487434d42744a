"""Ray Serve LLM's LLMServer as every model runs it (`LLMConfig.server_cls`), on both request
paths, with or without LoRA adapters. Three changes, each at one of Ray's injection points:

- vLLM leaves the process's logging alone (unless the pod sets VLLM_CONFIGURE_LOGGING): its
  engine start applies a logging dictConfig, which closes every handler in the process, Serve's
  replica log included; a restarted Serve controller then cannot adopt this replica
  (`is_allocated` reads that handler's file) and replaces it, reloading the model. vLLM's
  loggers propagate to the handlers Ray set up for the worker instead.
- Ray Serve LLM's usage telemetry runs only where Ray's usage stats are on. Its engine start
  creates a detached `TelemetryAgent` actor on the head whatever `RAY_USAGE_STATS_ENABLED`
  says: a Python worker of its own (about 0.5 GB) that only keeps what the dashboard would
  report. With the stats off (`usage`: every Ray pod the operator renders, and the local
  command) nothing would be reported, so the actor is not made.
- Adapters are loaded from folders (`adapters.LocalAdapterLoader`), not object storage.
"""

from __future__ import annotations

import os
from typing import Any

from ray.llm._internal.serve.core.server.llm_server import LLMServer

from alpaca_serving import usage
from alpaca_serving.adapters import LocalAdapterLoader


class AlpacaLLMServer(LLMServer):
    """Ray Serve LLM's LLMServer: vLLM's logging left to Ray, telemetry only with usage stats
    on, adapters from local folders."""

    async def __init__(
        self,
        llm_config: Any,
        *,
        engine_cls: Any = None,
        model_downloader: Any = None,
    ) -> None:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        await super().__init__(
            llm_config,
            engine_cls=engine_cls,
            model_downloader=model_downloader or LocalAdapterLoader,
        )

    async def _start_engine(self) -> None:
        """Ray's engine start, without its telemetry report when usage stats are off (Ray 2.60's
        `_start_engine` is the engine's start, then the report and a usage tag; the version is
        pinned and a unit test checks that this is still so)."""
        if usage.enabled(os.environ):
            await super()._start_engine()
            return
        if self.engine is None:
            raise ValueError("Engine is not set")
        await self.engine.start()
