"""The Alpaca prompts, the chat template that renders them, and the serveConfigV2 entry."""

from __future__ import annotations

import argparse
import json

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
)
from alpaca_serving.tokenizer import prepare_tokenizer

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


def test_prepare_tokenizer_sets_the_chat_template(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "chat_template": "old"})
    )
    (model / "chat_template.jinja").write_text("old")
    (model / "config.json").write_text("{}")
    out = prepare_tokenizer(str(model), "alpaca", str(tmp_path / "work"))
    config = json.loads((tmp_path / "work" / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == alpaca_chat_template() and config["eos_token"] == "</s>"
    assert not (tmp_path / "work" / "tokenizer" / "chat_template.jinja").exists()
    assert prepare_tokenizer(str(model), "none", str(tmp_path / "w2")) == str(model)
    prepare_tokenizer(str(model), "{{ messages[0]['content'] }}", str(tmp_path / "w3"))
    assert (
        json.loads((tmp_path / "w3" / "tokenizer" / "tokenizer_config.json").read_text())[
            "chat_template"
        ]
        == "{{ messages[0]['content'] }}"
    )
    assert out.endswith("tokenizer")


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
    args = argparse.Namespace(config=None, model=str(model), name=None, template=None, cpu=True)
    config = config_from(args)
    assert config.served_model_name == "smollm2" and config.accelerator == "cpu"
    assert config.engine_kwargs["dtype"] == "bfloat16"
    with pytest.raises(SystemExit):
        main(["serve"])  # neither --model nor --config
