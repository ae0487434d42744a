"""The RayService's Ray containers carry Ray Serve's fast-path variables exactly when the model's
application takes that path: a model without LoRA adapters (decision 39). Every Ray container
has Ray's usage stats off, on either path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for, serving_config
from alpaca_operator.render import capacity, rayservice
from alpaca_serving import paths, usage

REPO = Path(__file__).resolve().parents[3]
USAGE_OFF = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
FAST_ENV = [
    *USAGE_OFF,
    {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
    {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
    {"name": "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "value": "1"},
    {"name": "RAY_SERVE_DEFAULT_HTTP_HOST", "value": "0.0.0.0"},
]


def _spec(example: str, **changes: Any) -> tuple[str, AlpacaModelSpec]:
    doc = yaml.safe_load((REPO / "examples" / example).read_text())
    return doc["metadata"]["name"], AlpacaModelSpec.model_validate({**doc["spec"], **changes})


def _rendered(name: str, spec: AlpacaModelSpec) -> dict[str, Any]:
    place = capacity.placement(spec.capacity, spec.resources, "team", name)
    app = application_for(spec, "/models/x", name)
    return rayservice.rayservice(spec, name, "team", app, "img", "2.60.0", place)


def _ray_containers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [c for t in templates for c in t["spec"]["containers"]]


@pytest.mark.parametrize("example", ["alpaca-local.yaml", "alpaca.yaml"])
def test_a_model_without_adapters_runs_the_fast_path_on_head_and_workers(example):
    name, spec = _spec(example)
    assert not spec.adapters
    assert paths.request_path(serving_config(spec, "/models/x", name)) == "fast"
    containers = _ray_containers(_rendered(name, spec))
    assert [c["name"] for c in containers] == ["ray-head", "ray-worker"]
    for container in containers:
        assert container["env"] == FAST_ENV


def test_a_model_with_adapters_keeps_the_standard_path_and_only_usage_stats_off():
    name, spec = _spec("alpaca-karpenter.yaml")
    assert spec.adapters
    assert paths.request_path(serving_config(spec, "/models/x", name)) == "standard"
    containers = _ray_containers(_rendered(name, spec))
    assert len(containers) == 2
    for container in containers:
        assert container["env"] == USAGE_OFF


def test_the_env_follows_the_application_entry_it_runs():
    """The variables come from the entry the builder is handed, not a second reading of the spec."""
    name, spec = _spec("alpaca-local.yaml")
    entry = application_for(spec, "/models/x", name)
    assert rayservice.ray_env(entry) == {**usage.OFF, **paths.FAST_PATH_ENV}
    forced = {**entry, "args": {**entry["args"], "request_path": "standard"}}
    assert rayservice.ray_env(forced) == usage.OFF
    adapters = [{"name": "a", "path": "/models/a"}]
    with_adapters = {**entry, "args": {**entry["args"], "adapters": adapters}}
    assert rayservice.ray_env(with_adapters) == usage.OFF
