"""The CRDs in crds/ are exactly what the API models generate, and they teach the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from alpaca_operator.api.crd import KINDS, crd

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crds_folder_matches_the_models(kind):
    path = REPO / "crds" / f"{kind.name}.yaml"
    assert path.exists(), f"{path} missing: run `make crds`"
    assert yaml.safe_load(path.read_text()) == crd(kind), (
        f"{path} drifted from the models: run `make crds`"
    )


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _schema(kind) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind):
    schema = _schema(kind)
    for part in ("spec", "status"):
        for path, node in _walk(schema["properties"][part], part):
            if path.endswith("[]") or path.endswith("{}"):
                continue  # list items and map values are described by their field
            assert node.get("description"), f"{kind.kind} {path} has no description"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind):
    allowed_anyof = [{"type": "integer"}, {"type": "string"}]
    for path, node in _walk(_schema(kind)):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        if "anyOf" in node:
            assert node["anyOf"] == allowed_anyof and node.get("x-kubernetes-int-or-string"), path
        else:
            assert "type" in node, f"{path} has no type"
        assert "title" not in node and "nullable" not in node, path


def test_cel_rules_present():
    rules = [
        rule["rule"]
        for kind in KINDS
        for _, node in _walk(_schema(kind))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert "!has(self.lora) || self.method == 'lora'" in rules
    assert len(rules) >= 8


def test_names_columns_and_subresources():
    by_kind = {k.kind: crd(k) for k in KINDS}
    model, finetune = by_kind["AlpacaModel"]["spec"], by_kind["AlpacaFineTune"]["spec"]
    assert "am" in model["names"]["shortNames"] and finetune["names"]["shortNames"] == ["aft"]

    def cols(spec):
        return [
            c["name"]
            for c in spec["versions"][0]["additionalPrinterColumns"]
            if not c.get("priority")
        ]

    assert cols(model) == ["Phase", "Ready", "Endpoint", "Age"]
    assert cols(finetune) == ["Phase", "Progress", "Loss", "Age"]
    for spec in (model, finetune):
        assert spec["versions"][0]["subresources"] == {"status": {}}
        assert spec["scope"] == "Namespaced"


def test_chart_crds_and_clusterrole_are_generated():
    from alpaca_operator.rbac import clusterrole_template

    chart = REPO / "charts" / "alpaca-operator"
    assert (chart / "templates" / "clusterrole.yaml").read_text() == clusterrole_template(), (
        "run `make crds`"
    )
    for kind in KINDS:
        assert (chart / "crds" / f"{kind.name}.yaml").read_text() == (
            REPO / "crds" / f"{kind.name}.yaml"
        ).read_text()
