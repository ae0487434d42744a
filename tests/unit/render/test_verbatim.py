"""Spec fields reach containers as written: the kubelet expands `$(VAR)` in command, args and
env values from the container's environment, so without escaping `weights.source:
https://host/$(HF_TOKEN)/` would send a Secret's token to that host (and into status and
Events). `expand` below follows the kubelet's rules (k8s.io/kubernetes
third_party/forked/golang/expansion); the node tier shows the real kubelet doing the same."""

from __future__ import annotations

import json
import re

import pytest

from alpaca_operator.api import AlpacaFineTuneSpec
from alpaca_operator.api.weights import Weights
from alpaca_operator.render import finetune, weights
from alpaca_operator.render.capacity import Placement
from alpaca_operator.render.security import verbatim

ENV = {"HF_TOKEN": "hf_secret", "AWS_SECRET_ACCESS_KEY": "aws_secret"}
HOSTILE = [
    "https://evil.example/$(HF_TOKEN)/",
    "s3://bucket/$(AWS_SECRET_ACCESS_KEY)",
    "https://host/a$$(HF_TOKEN)b/",
    "https://host/price$5/$(/",
    "https://host/plain/",
]


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's expansion: `$$` -> `$`, `$(NAME)` -> its value when NAME is defined (left
    as written otherwise), any other `$` kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def test_expand_models_the_kubelet():
    assert expand("$(HF_TOKEN)", ENV) == "hf_secret"
    assert expand("$$(HF_TOKEN)", ENV) == "$(HF_TOKEN)"
    assert expand("$(UNSET)", ENV) == "$(UNSET)"
    assert expand("a$b", ENV) == "a$b"


@pytest.mark.parametrize("text", HOSTILE)
def test_verbatim_comes_out_as_written(text: str):
    assert expand(verbatim(text), ENV) == text


@pytest.mark.parametrize("source", HOSTILE)
def test_the_fill_job_passes_its_sources_as_written(source: str):
    spec = Weights.model_validate(
        {"source": source, "revision": "r$(HF_TOKEN)", "recover": {"base": source}}
    )
    job = weights.fill_job(spec, "research", "alpaca-weights:test")
    container = job["spec"]["template"]["spec"]["containers"][0]
    seen = [expand(a, ENV) for a in container["args"]]
    assert seen[seen.index("--source") + 1] == source
    assert seen[seen.index("--recover-base") + 1] == source
    assert seen[seen.index("--revision") + 1] == "r$(HF_TOKEN)"
    assert not any(secret in " ".join(seen) for secret in ENV.values())


def test_the_training_job_passes_the_dataset_and_its_config_as_written():
    source = "https://evil.example/$(HF_TOKEN)/alpaca.json"
    spec = AlpacaFineTuneSpec.model_validate(
        {
            "baseModel": {"source": "hf://org/base"},
            "dataset": {"source": source},
            "hyperparameters": {"learningRate": 0.0001},
        }
    )
    job = finetune.training_job(
        spec, "tune", "research", "base-cache", "train:test", "weights:test", Placement(), False
    )
    pod = job["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert expand(fetch["args"][fetch["args"].index("--source") + 1], ENV) == source
    config = next(e for e in pod["containers"][0]["env"] if e["name"] == "ALPACA_TRAIN_CONFIG")
    assert json.loads(expand(config["value"], ENV)) == finetune.train_config(
        spec, "/base/base-cache"
    )
    # what the operator means to be expanded still is
    rank = next(a for a in pod["containers"][0]["command"] if a.startswith("--node-rank"))
    assert re.fullmatch(r"--node-rank=\$\(JOB_COMPLETION_INDEX\)", rank)
