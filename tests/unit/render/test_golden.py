"""Renderers are pure: every example renders to exactly its golden file.

Regenerate after an intended change with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.config import OperatorConfig
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, finetune, names, networkpolicy, rayservice, weights

REPO = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
MODELS = [
    p
    for p in sorted((REPO / "examples").glob("*.yaml"))
    if yaml.safe_load(p.read_text())["kind"] == "AlpacaModel"
]
FINETUNES = [
    p
    for p in sorted((REPO / "examples").glob("*.yaml"))
    if yaml.safe_load(p.read_text())["kind"] == "AlpacaFineTune"
]
CONFIG = OperatorConfig(
    serving_image="alpaca-serving:test",
    weights_image="alpaca-weights:test",
    training_image="alpaca-training:test",
)


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
        networkpolicy.ray_network_policy(name, namespace, CONFIG.dashboard_namespaces),
    ]
    return [o for o in out if o is not None]


def _rendered(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return render_finetune(doc) if path in FINETUNES else render_model(doc)


@pytest.mark.parametrize("path", [*MODELS, *FINETUNES], ids=lambda p: p.name)
def test_example_renders_to_golden(path):
    rendered = _rendered(path)
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


def render_finetune(doc: dict[str, Any], namespace: str = "default") -> list[dict[str, Any]]:
    """Every child a fine-tune's reconcile renders, as its passes create them: the base weights'
    cache and fill, the output volume, the rank Service, the trainer's account, the training Job
    (suspended at creation when queued) and the AlpacaModel that serves the result."""
    name = doc["metadata"]["name"]
    spec = AlpacaFineTuneSpec.model_validate(doc["spec"])
    cache = names.cache_name(spec.base_model)
    out = [
        weights.cache_pvc(spec.base_model, namespace),
        *weights.fill_rbac(cache, namespace),
        weights.fill_job(spec.base_model, namespace, CONFIG.weights_image),
        finetune.output_pvc(spec, name, namespace),
        finetune.rendezvous_service(name, namespace),
        *finetune.trainer_rbac(name, namespace),
        finetune.training_job(
            spec,
            name,
            namespace,
            cache,
            spec.image or CONFIG.training_image,
            CONFIG.weights_image,
            capacity.placement(spec.capacity, spec.resources, namespace, name),
            suspend=spec.suspend or spec.queue_name is not None,
        ),
        finetune.served_model(spec, name, namespace, spec.base_model.to_wire()),
    ]
    return [o for o in out if o is not None]


@pytest.mark.parametrize("path", FINETUNES, ids=lambda p: p.name)
def test_no_object_is_shared_between_finetune_manifests(path):
    text = yaml.safe_dump_all(render_finetune(yaml.safe_load(path.read_text())), sort_keys=False)
    assert "&id" not in text


@pytest.mark.parametrize("path", FINETUNES, ids=lambda p: p.name)
def test_finetune_rendering_is_deterministic(path):
    doc = yaml.safe_load(path.read_text())
    assert render_finetune(doc) == render_finetune(doc)


def test_every_example_has_a_golden_file():
    assert FINETUNES and MODELS
    assert {p.name for p in GOLDEN.glob("*.yaml")} == {p.name for p in MODELS + FINETUNES}
