"""The cache key: stable, DNS-1123-safe, the operator's PVC name; the package's import rules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_operator.api.weights import Recover, Weights
from alpaca_operator.render import names
from alpaca_weights import cache

PACKAGE = Path(__file__).resolve().parents[2] / "weights" / "alpaca_weights"
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IDENTITIES = [
    Weights(source="hf://tatsu-lab/alpaca-7b-wdiff"),
    Weights(source="hf://tatsu-lab/alpaca-7b-wdiff/", revision="main"),
    Weights(source="s3://bucket/Models/ALPACA_7B", convert_to_safetensors=False),
    Weights(
        source="hf://tatsu-lab/alpaca-7b-wdiff",
        recover=Recover(base="pvc://llama/7b", base_revision="v1", expected_checksum=50637.1836),
    ),
    Weights(source="https://example.com/" + "x" * 200),
    Weights(source="/mnt/models/___"),
]


@pytest.mark.parametrize("weights", IDENTITIES, ids=lambda w: w.source[:40])
def test_cache_key_is_the_operators_pvc_name(weights):
    recover = weights.recover
    key = cache.cache_key(
        weights.source,
        weights.revision,
        recover.base if recover else None,
        recover.base_revision if recover else None,
        weights.convert_to_safetensors,
    )
    assert key == names.cache_name(weights)
    assert DNS_1123_LABEL.match(key) and len(key) <= 49
    assert len(cache.fill_job_name(key)) <= 63
    assert cache.fill_job_name(key) == names.fill_job_name(key)


def test_cache_key_is_stable_and_ignores_a_trailing_slash():
    assert cache.cache_key("hf://tatsu-lab/alpaca-7b-wdiff") == "weights-alpaca-7b-wdiff-b102b48050"
    assert cache.cache_key("s3://b/m/") == cache.cache_key("s3://b/m")
    assert cache.cache_key("s3://b/m", "v2") != cache.cache_key("s3://b/m")
    assert cache.cache_key("s3://b/m", recover_base="/l") != cache.cache_key("s3://b/m")


def test_cli_key_prints_it(capsys):
    from alpaca_weights import cli

    assert cli.main(["key", "--source", "hf://tatsu-lab/alpaca-7b-wdiff", "--to-safetensors"]) == 0
    assert capsys.readouterr().out.strip() == "weights-alpaca-7b-wdiff-b102b48050"


def test_weights_imports_none_of_the_other_programs():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alpaca_"):
                assert node.module.startswith("alpaca_weights"), (
                    f"{path.name} imports {node.module}"
                )


def test_heavy_libraries_load_only_when_used():
    code = (
        "import sys, alpaca_weights.cli, alpaca_weights.fill;"
        "heavy = {'torch','safetensors','huggingface_hub','fsspec','s3fs','gcsfs','boto3','requests'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
