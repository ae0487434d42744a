"""Alpaca data: the templates, which tokens the loss sees, loading and the collator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_serving.templates import PROMPT_INPUT, PROMPT_NO_INPUT
from alpaca_training.data import (
    IGNORE_INDEX,
    PROMPT_DICT,
    Record,
    SupervisedCollator,
    format_prompt,
    load_records,
    tokenize_records,
)
from alpaca_training.model import load_tokenizer
from tests.tiny_llama import FIXTURE


def test_templates_are_the_serving_ones_byte_for_byte():
    assert PROMPT_DICT["prompt_input"].encode() == PROMPT_INPUT.encode()
    assert PROMPT_DICT["prompt_no_input"].encode() == PROMPT_NO_INPUT.encode()


def test_templates_are_stanfords():
    assert format_prompt(Record("Add.", "1 and 2", "3")) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:"
    )
    assert format_prompt(Record("Say hi.", "", "hi")) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:"
    )


def test_loads_jsonl_and_json_files_of_a_folder(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text(FIXTURE.read_text())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(
        json.dumps(
            [
                {"instruction": "Say hi.", "output": "hi"},
                {"instruction": "x", "input": None, "output": "y"},
            ]
        )
    )
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / ".hidden.json").write_text("[broken")
    records = load_records(tmp_path)
    assert len(records) == 24 + 2
    assert records[-2] == Record("Say hi.", "", "hi")
    assert records[-1] == Record("x", "", "y")
    assert sum(1 for r in records if r.input) == 13  # the fixture: 13 with input, 11 without


def test_bad_records_name_their_place(tmp_path: Path):
    (tmp_path / "bad.jsonl").write_text(
        '{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n'
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'output'"):
        load_records(tmp_path)
    (tmp_path / "bad.jsonl").unlink()
    with pytest.raises(ValueError, match=r"no \.json or \.jsonl files"):
        load_records(tmp_path)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    tok = load_tokenizer(tiny_llama, max_length=128)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok


def test_only_the_output_and_eos_are_learned(tokenizer):
    records = load_records(FIXTURE)
    examples = tokenize_records(records, tokenizer, max_length=128)
    assert len(examples) == len(records)
    for record, example in zip(records, examples, strict=True):
        prompt_ids = tokenizer(format_prompt(record))["input_ids"]
        labels = example["labels"]
        masked = [i for i, label in enumerate(labels) if label == IGNORE_INDEX]
        assert masked == list(range(len(prompt_ids)))  # exactly the prompt's tokens, first
        assert example["input_ids"][: len(prompt_ids)] == prompt_ids
        learned = labels[len(prompt_ids) :]
        assert learned == example["input_ids"][len(prompt_ids) :]
        assert tokenizer.decode(learned) == record.output + tokenizer.eos_token
        assert learned[-1] == tokenizer.eos_token_id


def test_truncation_at_max_length(tokenizer):
    record = Record("Count from one to five.", "", "One, two, three, four, five. " * 20)
    prompt_len = len(tokenizer(format_prompt(record))["input_ids"])
    [example] = tokenize_records([record], tokenizer, max_length=prompt_len + 5)
    assert len(example["input_ids"]) == prompt_len + 5
    assert example["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert IGNORE_INDEX not in example["labels"][prompt_len:]
    # a prompt that fills maxLength leaves nothing to learn: dropped
    assert tokenize_records([record], tokenizer, max_length=prompt_len) == []


def test_collator_pads_right(tokenizer):
    pad = tokenizer.pad_token_id
    collate = SupervisedCollator(pad)
    batch = collate(
        [
            {"input_ids": [1, 5, 6, 7], "labels": [IGNORE_INDEX, IGNORE_INDEX, 6, 7]},
            {"input_ids": [1, 9], "labels": [IGNORE_INDEX, 9]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 9, pad, pad]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 6, 7],
        [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # Stanford's input_ids.ne(pad) when the pad token is not in the text
    assert batch["attention_mask"].tolist() == batch["input_ids"].ne(pad).long().tolist()
    # the pad token inside an example (a lora run padding with </s>) stays attended
    eos = tokenizer.eos_token_id
    batch = SupervisedCollator(eos)(
        [
            {"input_ids": [1, 5, eos], "labels": [IGNORE_INDEX, 5, eos]},
            {"input_ids": [1], "labels": [1]},
        ]
    )
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
