"""Prompt templates: Stanford Alpaca's two instruction templates, as a Hugging Face chat template.

The template text is Stanford Alpaca's `PROMPT_DICT` (train.py), character for character: the
model was trained on exactly these strings, and answers best when prompted with them.

Chat messages map onto it like this:
- the last `user` message is the instruction;
- a `system` message, if any, is the input (the further context the task is paired with);
- earlier user/assistant turns are rendered as earlier Alpaca exchanges, each response right
  after "### Response:" and ended by the eos token, as the training targets were (output +
  eos), then a blank line before the next exchange.
The template already ends with "### Response:", so a generation prompt needs nothing more.
"""

from __future__ import annotations

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """One Alpaca prompt, as in training (`input` empty: the template without input)."""
    if input:
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def _jinja_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def alpaca_chat_template() -> str:
    """The Jinja chat template that renders messages with the Alpaca prompts."""
    with_input_head, with_input_tail = PROMPT_INPUT.split("{instruction}")
    between, after_input = with_input_tail.split("{input}")
    no_input_head, no_input_tail = PROMPT_NO_INPUT.split("{instruction}")
    return (
        "{%- set ns = namespace(input='') -%}"
        "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.input = m['content'] -%}{%- endif -%}{%- endfor -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' -%}"
        "{%- if ns.input -%}"
        f"{{{{ '{_jinja_literal(with_input_head)}' + m['content'] + '{_jinja_literal(between)}' + ns.input + '{_jinja_literal(after_input)}' }}}}"
        "{%- else -%}"
        f"{{{{ '{_jinja_literal(no_input_head)}' + m['content'] + '{_jinja_literal(no_input_tail)}' }}}}"
        "{%- endif -%}"
        "{%- elif m['role'] == 'assistant' -%}"
        "{{ m['content'] + (eos_token or '') + '\\n\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def chat_template_for(prompt_template: str) -> str | None:
    """The Jinja chat template a `prompt_template` setting stands for: Stanford Alpaca's for
    `alpaca`, None (the model's own) for `none`, anything else is a Jinja template itself."""
    if prompt_template == "none":
        return None
    if prompt_template == "alpaca":
        return alpaca_chat_template()
    return prompt_template
