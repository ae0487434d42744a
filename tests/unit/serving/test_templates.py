"""The Alpaca prompts, the chat template that renders them, and the serveConfigV2 entry."""

from __future__ import annotations

import argparse

import jinja2
import pytest

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for
from alpaca_serving.config import ServingConfig
from alpaca_serving.serve_config import application_entry
from alpaca_serving.templates import (
    PROMPT_INPUT,
    PROMPT_NO_INPUT,
    alpaca_chat_template,
    alpaca_prompt,
    chat_template_for,
)

# Stanford Alpaca's train.py PROMPT_DICT, verbatim.
STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
STANFORD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def render(messages: list[dict[str, str]]) -> str:
    return (
        jinja2.Environment()
        .from_string(alpaca_chat_template())
        .render(messages=messages, eos_token="</s>")
    )


def test_prompts_are_stanfords():
    assert PROMPT_NO_INPUT == STANFORD_NO_INPUT
    assert PROMPT_INPUT == STANFORD_INPUT


@pytest.mark.parametrize("text", ["Name a colour.", "Quote 'this' \\ and \"that\"\nplease"])
def test_chat_template_renders_the_prompt(text):
    assert render([{"role": "user", "content": text}]) == alpaca_prompt(text)
    assert render(
        [{"role": "system", "content": "ctx"}, {"role": "user", "content": text}]
    ) == alpaca_prompt(text, "ctx")


def test_multi_turn_reads_like_training_data():
    out = render(
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ]
    )
    assert out == alpaca_prompt("Q1") + "A1</s>\n\n" + alpaca_prompt("Q2")


def test_chat_template_for_each_setting():
    assert chat_template_for("alpaca") == alpaca_chat_template()
    assert chat_template_for("none") is None
    assert chat_template_for("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"


def test_the_app_config_carries_the_template_as_text_and_no_builder_paths():
    """The builder (a RayService's head) and the engine (a worker pod) do not share a disk:
    nothing in the LLMConfig may point into the builder's filesystem."""
    pytest.importorskip("ray.serve.llm")
    from alpaca_serving.adapters import adapters_of
    from alpaca_serving.app import llm_config

    config = ServingConfig(
        model_path="/models/m",
        served_model_name="m",
        accelerator="cpu",
        adapters=[{"name": "sql", "path": "/models/sql-cache"}],
    )
    llm = llm_config(config)
    assert llm.engine_kwargs["chat_template"] == alpaca_chat_template()
    assert "tokenizer" not in llm.engine_kwargs
    assert adapters_of(llm) == {"sql": "/models/sql-cache"}
    plain = llm_config(config.model_copy(update={"prompt_template": "none", "adapters": []}))
    assert "chat_template" not in plain.engine_kwargs


@pytest.mark.parametrize("field", ["model_path", "adapter"])
def test_relative_paths_are_refused(field):
    """A relative path would resolve differently on the builder and on each replica's node."""
    data = {"model_path": "/models/m", "served_model_name": "m"}
    if field == "model_path":
        data["model_path"] = "models/m"
    else:
        data["adapters"] = [{"name": "a", "path": "adapters/a"}]
    with pytest.raises(ValueError, match="absolute"):
        ServingConfig.model_validate(data)


def test_the_operator_renders_the_serving_apps_own_entry():
    spec = AlpacaModelSpec.model_validate(
        {
            "weights": {"source": "hf://a/b"},
            "resources": {"gpus": 2},
            "engine": {"tensorParallelSize": 2, "maxModelLen": 2048},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "scaleToZeroDelay": "20m"},
            "prompt": {"template": "alpaca"},
        }
    )
    entry = application_for(spec, "/models/c", "alpaca")
    config = ServingConfig.model_validate(entry["args"])
    assert entry == application_entry(config)
    assert entry["import_path"] == "alpaca_serving.app:build_app"
    assert (
        config.engine_kwargs["tensor_parallel_size"] == 2
        and config.engine_kwargs["max_model_len"] == 2048
    )
    assert (config.autoscaling.min_replicas, config.autoscaling.max_replicas) == (0, 3)
    assert config.autoscaling.downscale_to_zero_delay_s == 1200
    assert config.accelerator == "gpu" and config.prompt_template == "alpaca"


def test_local_command_config(tmp_path):
    from alpaca_serving.__main__ import config_from, main

    model = tmp_path / "SmolLM2"
    model.mkdir()
    args = argparse.Namespace(
        config=None, model=str(model), name=None, template=None, cpu=True, request_path=None
    )
    config = config_from(args)
    assert config.served_model_name == "smollm2" and config.accelerator == "cpu"
    assert config.engine_kwargs["dtype"] == "bfloat16"
    with pytest.raises(SystemExit):
        main(["serve"])  # neither --model nor --config
