"""The prompt template goes in as the tokenizer's chat template, at load time.

The weights cache is read-only in the serving pods, so the tokenizer files (small) are copied
into a writable folder with the chat template set, and vLLM is pointed at that copy with its
`tokenizer` argument; the weights are still read from the cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from alpaca_serving.templates import alpaca_chat_template

TOKENIZER_FILES = (
    "config.json",  # vLLM reads the model type next to the tokenizer
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def chat_template_for(prompt_template: str) -> str | None:
    """The Jinja chat template to install; None keeps the model's own."""
    if prompt_template == "none":
        return None
    if prompt_template == "alpaca":
        return alpaca_chat_template()
    return prompt_template


def prepare_tokenizer(model_path: str, prompt_template: str, work_dir: str) -> str:
    """A tokenizer folder carrying the chosen chat template; the model's own folder when the
    template is `none`."""
    template = chat_template_for(prompt_template)
    if template is None:
        return model_path
    source, target = Path(model_path), Path(work_dir) / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2))
    (target / "chat_template.jinja").unlink(missing_ok=True)  # it would win over the config
    return str(target)
