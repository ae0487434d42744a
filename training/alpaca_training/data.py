"""Alpaca instruction data: records, Stanford's prompt templates, tokenization with the prompt
masked out of the loss, and the padding collator.

As Stanford Alpaca's train.py: source = the prompt, target = output + eos; the model sees
source + target (cut at maxLength) and learns only the target: the first len(tokenized
source) labels are IGNORE_INDEX. torch is imported inside the collator only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""The label value the loss skips (torch's CrossEntropyLoss ignore_index)."""

PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
"""Stanford Alpaca's templates (train.py), character for character. The serving image keeps its
own copy (alpaca_serving.templates); a test asserts the two are equal."""

DATA_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Record:
    """One Alpaca example."""

    instruction: str
    input: str
    output: str


def _record(raw: Any, where: str) -> Record:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an Alpaca record must be an object, not {type(raw).__name__}")
    fields: dict[str, str] = {}
    for key in ("instruction", "input", "output"):
        value = raw.get(key)
        if value is None and key == "input":
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {key!r} must be a string")
        fields[key] = value
    return Record(**fields)


def _read_file(path: Path) -> list[Record]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append(_record(json.loads(line), f"{path}:{number}"))
        return records
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: an Alpaca .json file must hold a list of records")
    return [_record(raw, f"{path}[{index}]") for index, raw in enumerate(data)]


def data_files(path: Path) -> list[Path]:
    """The .json/.jsonl files at `path` (a file, or a folder searched recursively), by name."""
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in DATA_SUFFIXES and _visible(p, path)
    )
    if not files:
        raise ValueError(f"no .json or .jsonl files under {path}")
    return files


def _visible(file: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in file.relative_to(root).parts)


def load_records(path: Path) -> list[Record]:
    """Every record in the data folder (or file), files in name order."""
    records = [record for file in data_files(path) for record in _read_file(file)]
    if not records:
        raise ValueError(f"no Alpaca records in {path}")
    return records


def format_prompt(record: Record) -> str:
    """The source text: Stanford's template with input, or without when the input is empty."""
    if record.input:
        return PROMPT_DICT["prompt_input"].format(
            instruction=record.instruction, input=record.input
        )
    return PROMPT_DICT["prompt_no_input"].format(instruction=record.instruction)


def _token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> list[list[int]]:
    return tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]


def tokenize_records(
    records: Iterable[Record], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, list[int]]]:
    """`input_ids` (source + target, cut at max_length) and `labels` (the same ids with the
    source's tokens set to IGNORE_INDEX), one dict per example.

    Examples whose prompt alone fills max_length have no target token left to learn; they are
    dropped (and counted in a log line) rather than fed as all-masked rows."""
    records = list(records)
    sources = [format_prompt(r) for r in records]
    examples = [s + r.output + tokenizer.eos_token for s, r in zip(sources, records, strict=True)]
    source_ids = _token_ids(tokenizer, sources, max_length)
    example_ids = _token_ids(tokenizer, examples, max_length)
    out: list[dict[str, list[int]]] = []
    for ids, source in zip(example_ids, source_ids, strict=True):
        masked = min(len(source), len(ids))
        if masked >= len(ids):
            continue
        out.append({"input_ids": list(ids), "labels": [IGNORE_INDEX] * masked + list(ids[masked:])})
    if len(out) < len(records):
        log.warning(
            "%d of %d examples dropped: their prompt fills maxLength=%d",
            len(records) - len(out),
            len(records),
            max_length,
        )
    return out


@dataclass
class SupervisedCollator:
    """Pads a batch on the right: input_ids with the pad token, labels with IGNORE_INDEX; the
    attention mask is 1 on each example's own tokens. That equals Stanford's
    `input_ids.ne(pad_token_id)` whenever the pad token does not occur in the text, and stays
    right when it does (LoRA runs reuse an existing token as pad, see model.py)."""

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
