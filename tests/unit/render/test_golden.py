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
from alpaca_operator.reconcile.finetune import finetune_manifests
from alpaca_operator.reconcile.model import model_manifests
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import names

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
    """Every child a model's reconcile renders (reconcile/model.model_manifests)."""
    spec = AlpacaModelSpec.model_validate(doc["spec"])
    name = doc["metadata"]["name"]
    return model_manifests(spec, name, namespace, CONFIG, application_for).all()


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
    """Every child a fine-tune's reconcile renders (reconcile/finetune.finetune_manifests), as
    its passes create them: the base weights' cache and fill, the output volume, the rank
    Service, the trainer's account, the NodePool on provisioner karpenter, the training Job
    (suspended at creation when queued) and the AlpacaModel that serves the result."""
    spec = AlpacaFineTuneSpec.model_validate(doc["spec"])
    name = doc["metadata"]["name"]
    return finetune_manifests(spec, name, namespace, CONFIG).all()


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


def _selected_nodepools(obj: Any) -> list[str]:
    """The NodePools the pod templates in a manifest select, at any depth."""
    if isinstance(obj, list):
        return [pool for item in obj for pool in _selected_nodepools(item)]
    if not isinstance(obj, dict):
        return []
    found = (
        [str(obj["nodeSelector"][names.LABEL_NODEPOOL])]
        if names.LABEL_NODEPOOL in (obj.get("nodeSelector") or {})
        else []
    )
    return found + [pool for value in obj.values() for pool in _selected_nodepools(value)]


@pytest.mark.parametrize("path", [*MODELS, *FINETUNES], ids=lambda p: p.name)
def test_pods_on_karpenter_capacity_select_the_nodepool_rendered_with_them(path):
    doc = yaml.safe_load(path.read_text())
    rendered = _rendered(path)
    pools = [o["metadata"]["name"] for o in rendered if o["kind"] == "NodePool"]
    selected = set(_selected_nodepools(rendered))
    if doc["spec"].get("capacity", {}).get("provisioner") == "karpenter":
        assert len(pools) == 1 and selected == set(pools)
    else:
        assert not pools and not selected
