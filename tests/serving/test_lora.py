"""LoRA adapters served by name: an adapter trained here by alpaca_training's LoRA recipe on a
tiny Llama, loaded by the real vLLM through Ray Serve LLM's multiplexing, from its folder (on
the worker node: the builder on the head never reads it)."""

from __future__ import annotations

import openai
import pytest

from tests.serving.conftest import ADAPTER, MODEL, SERVING, Served

pytestmark = SERVING

PROMPT = "Below is an instruction that describes a task."


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key="unused")


def _first_token_logprobs(client: openai.OpenAI, model: str) -> dict[str, float]:
    reply = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5
    )
    return dict(reply.choices[0].logprobs.top_logprobs[0])


def test_the_adapter_is_listed_under_its_name(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, f"{MODEL}:{ADAPTER}"]
    assert client.models.retrieve(f"{MODEL}:{ADAPTER}").id == f"{MODEL}:{ADAPTER}"


def test_the_adapter_changes_what_the_model_says(client):
    base = _first_token_logprobs(client, MODEL)
    tuned = _first_token_logprobs(client, f"{MODEL}:{ADAPTER}")
    assert base != tuned
    # and asking the base again gives the base's numbers: the adapter applies per request
    assert _first_token_logprobs(client, MODEL) == pytest.approx(base, abs=1e-3)


def test_chat_with_the_adapter_uses_the_alpaca_template(client):
    reply = client.chat.completions.create(
        model=f"{MODEL}:{ADAPTER}",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == f"{MODEL}:{ADAPTER}"
    assert reply.usage.prompt_tokens > 20  # the Alpaca preamble was added around the question


def test_an_unknown_adapter_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model=f"{MODEL}:nope", prompt=PROMPT, max_tokens=1)
    assert "no adapter named" in str(caught.value)
