"""The operator and the weights CLI agree through one module, `alpaca_weights.contract`: the
fill Job the operator renders is one the CLI understands, and what the CLI reports is what the
operator reads."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.conditions import FAILURE_REASONS
from alpaca_operator.observe import model as observe
from alpaca_operator.render import names, weights
from alpaca_weights import cache, cli, contract, errors

REPO = Path(__file__).resolve().parents[2]


def _example_weights():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "AlpacaModel":
                spec = AlpacaModelSpec.model_validate(doc["spec"])
                yield path.name, spec.weights
                for adapter in spec.adapters:
                    yield f"{path.name}:{adapter.name}", adapter.as_weights(spec.weights)
            elif doc["kind"] == "AlpacaFineTune":
                yield path.name, AlpacaFineTuneSpec.model_validate(doc["spec"]).base_model


EXAMPLES = list(_example_weights())


def test_the_contract_is_standard_library_only():
    tree = ast.parse(Path(contract.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize(("where", "spec"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_the_rendered_fill_job_is_one_the_cli_understands(where, spec):
    job = weights.fill_job(spec, "ns", "img")
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = cli.parser().parse_args(container["args"])
    key = names.cache_name(spec)
    # the key the CLI is told is the PVC's name; with the default volume it is also the one the
    # CLI computes from the same weights identity (another class or mode is another cache)
    assert args.key == key == job["metadata"]["labels"][names.LABEL_CACHE]
    recover = spec.recover
    from_weights = cache.cache_key(
        spec.source,
        spec.revision,
        recover.base if recover else None,
        recover.base_revision if recover else None,
        spec.convert_to_safetensors,
    )
    default_volume = spec.cache.storage_class_name is None and (
        spec.cache.access_mode == names.DEFAULT_ACCESS_MODE
    )
    assert (key == from_weights) == default_volume
    assert key == contract.key_of(names.cache_identity(spec))
    assert job["metadata"]["name"] == contract.fill_job_name(key)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.JOB_ENV] == contract.fill_job_name(key)
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["values"] == [contract.EXIT_PERMANENT]


def test_what_the_cli_reports_is_what_the_status_shows():
    assert set(contract.REASONS) <= FAILURE_REASONS
    for reason in contract.REASONS:
        err = errors.WeightsError(reason, "details")
        assert err.exit_code == (
            contract.EXIT_PERMANENT if reason in contract.PERMANENT else contract.EXIT_RETRY
        )
        message = contract.termination_message(reason, "details")
        assert observe._fill_failure(message) == (reason, "details")
    for phase in (contract.PHASE_CONVERTING, contract.PHASE_RECOVERING, contract.PHASE_VERIFYING):
        assert phase in observe.FILL_PHASES
