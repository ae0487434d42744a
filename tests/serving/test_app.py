"""The Alpaca app on the real Ray Serve LLM + vLLM, through the official openai client."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import openai
import pytest
from transformers import AutoTokenizer

from alpaca_serving.templates import alpaca_prompt
from tests.serving.conftest import SERVING

pytestmark = SERVING


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(served):
    return AutoTokenizer.from_pretrained(served.model_path)


def _count(tokenizer, text: str) -> set[int]:
    """Token counts the engine may report for a text (with or without a leading bos)."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return {n, n + 1}


def test_model_list(client, served):
    assert next(m.id for m in client.models.list().data) == served.model
    assert client.models.retrieve(served.model).id == served.model


def test_chat_uses_the_alpaca_template(client, tokenizer, served):
    reply = client.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.usage.prompt_tokens in _count(tokenizer, alpaca_prompt("Name a colour."))
    assert reply.usage.completion_tokens <= 8
    assert isinstance(reply.choices[0].message.content, str)


def test_system_message_is_the_input(client, tokenizer, served):
    messages = [
        {"role": "system", "content": "red, green, blue"},
        {"role": "user", "content": "Pick one."},
    ]
    reply = client.chat.completions.create(model=served.model, messages=messages, max_tokens=4)
    assert reply.usage.prompt_tokens in _count(
        tokenizer, alpaca_prompt("Pick one.", "red, green, blue")
    )


def test_raw_completion_is_not_templated(client, tokenizer, served):
    reply = client.completions.create(model=served.model, prompt="Water boils at", max_tokens=5)
    assert reply.usage.prompt_tokens in _count(tokenizer, "Water boils at")
    assert reply.usage.completion_tokens <= 5


def test_streaming(client, served):
    stream = client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) is not None


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )


def test_too_many_tokens_is_a_400(client, served):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=served.model, prompt="Hi", max_tokens=100_000)
    assert "max" in str(err.value).lower() or "context" in str(err.value).lower()


def test_malformed_json_is_a_4xx(served):
    request = urllib.request.Request(
        f"{served.base_url}/chat/completions",
        data=b'{"model": "tiny", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert 400 <= err.value.code < 500


def test_request_counter_moves(client, served):
    def scrape() -> str:
        with urllib.request.urlopen(served.metrics_url, timeout=10) as resp:
            return resp.read().decode()

    def requests_served(text: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith("ray_serve_num_http_requests_total{") or line.startswith(
                "ray_serve_num_http_requests{"
            ):
                total += float(line.rsplit(" ", 1)[-1])
        return total

    before = requests_served(scrape())
    for _ in range(3):
        client.completions.create(model=served.model, prompt="Hello", max_tokens=2)
    deadline = time.monotonic() + 60
    while requests_served(scrape()) < before + 3:
        assert time.monotonic() < deadline, "the Serve request counter did not move"
        time.sleep(2)

    # the engine's metrics are exported by the node its replica runs on (the worker), pushed
    # there by the replica's process on an interval: wait for them, a busy machine delays it
    def engine_metrics() -> str:
        with urllib.request.urlopen(served.engine_metrics_url, timeout=10) as resp:
            return resp.read().decode().lower()

    deadline = time.monotonic() + 120
    while "vllm" not in engine_metrics():
        assert time.monotonic() < deadline, "the worker node never exported the engine's metrics"
        time.sleep(2)
