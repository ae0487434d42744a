"""Every model's replica runs our LLMServer, and it skips Ray Serve LLM's usage telemetry where
Ray's usage stats are off. The serving tier checks the actor is not made on a real Ray
(tests/serving/test_restarts.py); here, Ray 2.60's engine start, with the engine and the
telemetry push replaced so that no Ray or vLLM starts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from alpaca_serving import usage
from alpaca_serving.config import ServingConfig

BASE = {"model_path": "/models/m", "served_model_name": "m", "accelerator": "cpu"}


@pytest.mark.parametrize("environ", [{}, {"RAY_USAGE_STATS_ENABLED": "1"}])
def test_usage_stats_are_on_unless_explicitly_off(environ):
    assert usage.enabled(environ)
    assert not usage.enabled({**environ, **usage.OFF})


@pytest.mark.parametrize("adapters", [[], [{"name": "sql", "path": "/models/sql"}]])
def test_every_model_runs_our_llm_server(adapters):
    pytest.importorskip("ray.serve.llm")
    from alpaca_serving.app import llm_config
    from alpaca_serving.server import AlpacaLLMServer

    config = ServingConfig.model_validate({**BASE, "adapters": adapters})
    assert llm_config(config).server_cls is AlpacaLLMServer


class _Engine:
    started = 0

    async def start(self) -> None:
        type(self).started += 1


@pytest.mark.parametrize(("environ", "pushed"), [({}, 1), (usage.OFF, 0)])
def test_the_engine_starts_and_telemetry_follows_usage_stats(monkeypatch, environ, pushed):
    pytest.importorskip("ray.serve.llm")
    from ray.llm._internal.serve.core.server import llm_server

    from alpaca_serving.app import llm_config
    from alpaca_serving.server import AlpacaLLMServer

    monkeypatch.delenv(usage.USAGE_STATS, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    reports: list[Any] = []

    def push(**kwargs: Any) -> None:
        reports.append(kwargs["all_models"])

    monkeypatch.setattr(llm_server, "push_telemetry_report_for_all_models", push)
    monkeypatch.setattr(llm_server, "record_extra_usage_tag", lambda *a, **k: None)
    config = llm_config(ServingConfig.model_validate(BASE))
    server = AlpacaLLMServer.sync_init(config, engine_cls=_Engine)
    _Engine.started = 0
    server.engine = _Engine()
    asyncio.run(server._start_engine())
    assert _Engine.started == 1
    # Ray's own engine start (usage stats on) reports once, with this model's config
    assert reports == [[config]] * pushed
