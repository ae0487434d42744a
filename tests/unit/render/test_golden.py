"""Renderers are pure: every example renders to exactly its golden file.

Regenerate after an intended change with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, names, rayservice, weights

REPO = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
MODELS = [
    p
    for p in sorted((REPO / "examples").glob("*.yaml"))
    if yaml.safe_load(p.read_text())["kind"] == "AlpacaModel"
]
CONFIG = OperatorConfig(serving_image="alpaca-serving:test", weights_image="alpaca-weights:test")


def render_model(doc: dict[str, Any], namespace: str = "default") -> list[dict[str, Any]]:
    name = doc["metadata"]["name"]
    spec = AlpacaModelSpec.model_validate(doc["spec"])
    place = capacity.placement(spec.capacity, spec.resources, namespace, name)
    cache = names.cache_name(spec.weights)
    out = [
        capacity.nodepool(spec.capacity, spec.resources, namespace, name),
        weights.cache_pvc(spec.weights, namespace),
        *weights.fill_rbac(cache, namespace),
        weights.fill_job(spec.weights, namespace, CONFIG.weights_image),
        *[
            obj
            for a in spec.adapters
            for w in [a.as_weights(spec.weights)]
            for obj in (
                weights.cache_pvc(w, namespace),
                *weights.fill_rbac(names.cache_name(w), namespace),
                weights.fill_job(w, namespace, CONFIG.weights_image),
            )
        ],
        rayservice.rayservice(
            spec,
            name,
            namespace,
            application_for(spec, rayservice.model_path(cache), spec.served_model_name or name),
            CONFIG.serving_image,
            CONFIG.ray_version,
            place,
        ),
        rayservice.endpoint_service(name, namespace),
    ]
    return [o for o in out if o is not None]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_renders_to_golden(path):
    rendered = render_model(yaml.safe_load(path.read_text()))
    golden = GOLDEN / path.name
    text = yaml.safe_dump_all(rendered, sort_keys=False, width=100)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run `make golden`"
    assert list(yaml.safe_load_all(golden.read_text())) == rendered, (
        f"{path.name} differs from {golden}: review, then `make golden`"
    )


def test_no_object_is_shared_between_manifests():
    """A dict reused in two places would make a later mutation change both (YAML shows it as an alias)."""
    for path in MODELS:
        text = yaml.safe_dump_all(render_model(yaml.safe_load(path.read_text())), sort_keys=False)
        assert "&id" not in text, path.name


def test_rendering_is_deterministic():
    doc = yaml.safe_load((REPO / "examples" / "alpaca-karpenter.yaml").read_text())
    assert render_model(doc) == render_model(doc)
