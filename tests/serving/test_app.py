"""The Alpaca app on the real Ray Serve LLM + vLLM, through the official openai client, on both
request paths: the standard one (Serve's Python proxy, the OpenAI ingress, the LLMServer; here
with a LoRA adapter, which keeps a model on it) and the fast one (HAProxy straight to the
LLMServer, which streams itself), each test once per path."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import openai
import psutil
import pytest
from transformers import AutoTokenizer

from alpaca_serving.templates import alpaca_prompt
from tests.serving.conftest import SERVING, LocalServe, Served

pytestmark = SERVING


@pytest.fixture(scope="module", params=["standard", "fast"])
def app(request: pytest.FixtureRequest) -> Served | LocalServe:
    """The app on one path (module scope: every test of a path, then the other's)."""
    return request.getfixturevalue("served" if request.param == "standard" else "served_fast")


@pytest.fixture(scope="module")
def client(app) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(app):
    return AutoTokenizer.from_pretrained(app.model_path)


def _count(tokenizer, text: str) -> set[int]:
    """Token counts the engine may report for a text (with or without a leading bos)."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return {n, n + 1}


def _processes(app: Served | LocalServe) -> list[psutil.Process]:
    """Every process of the app's Ray: the command's tree, or this process's and the worker
    node's."""
    # (conftest's classes may be imported twice, under two names: no isinstance)
    roots = [app.proc.pid] if hasattr(app, "proc") else [os.getpid(), app.worker.proc.pid]
    found = []
    for pid in roots:
        root = psutil.Process(pid)
        found += [root, *root.children(recursive=True)]
    return found


def test_no_usage_telemetry_actor_with_usage_stats_off(client, app):
    """Ray's usage stats are off (the serve command's default, the operator's Ray pods), so
    the replica's engine start made no Ray Serve LLM TelemetryAgent (a Python worker of ~0.5
    GB on the head); the replica itself runs our LLMServer."""
    assert next(m.id for m in client.models.list().data) == app.model  # the engine has started
    titles = []
    for proc in _processes(app):
        try:
            titles.append(" ".join(proc.cmdline()))
        except psutil.Error:  # gone meanwhile
            continue
    assert not [t for t in titles if "TelemetryAgent" in t], titles
    assert [t for t in titles if "ServeReplica:alpaca:AlpacaLLMServer" in t], titles


def test_model_list(client, app):
    assert next(m.id for m in client.models.list().data) == app.model
    assert client.models.retrieve(app.model).id == app.model


def test_chat_uses_the_alpaca_template(client, tokenizer, app):
    reply = client.chat.completions.create(
        model=app.model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.usage.prompt_tokens in _count(tokenizer, alpaca_prompt("Name a colour."))
    assert reply.usage.completion_tokens <= 8
    assert isinstance(reply.choices[0].message.content, str)


def test_system_message_is_the_input(client, tokenizer, app):
    messages = [
        {"role": "system", "content": "red, green, blue"},
        {"role": "user", "content": "Pick one."},
    ]
    reply = client.chat.completions.create(model=app.model, messages=messages, max_tokens=4)
    assert reply.usage.prompt_tokens in _count(
        tokenizer, alpaca_prompt("Pick one.", "red, green, blue")
    )


def test_raw_completion_is_not_templated(client, tokenizer, app):
    reply = client.completions.create(model=app.model, prompt="Water boils at", max_tokens=5)
    assert reply.usage.prompt_tokens in _count(tokenizer, "Water boils at")
    assert reply.usage.completion_tokens <= 5


def test_streaming(client, app):
    stream = client.chat.completions.create(
        model=app.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) is not None


def test_chunks_arrive_as_they_are_produced(client, app):
    """Streamed tokens are not held back and sent at the end (by a proxy's buffer, say)."""
    stream = client.completions.create(
        model=app.model,
        prompt="Once upon a time",
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
        stream=True,
    )
    arrivals = [time.monotonic() for c in stream if c.choices and c.choices[0].text]
    assert len(arrivals) >= 3, f"{len(arrivals)} chunks with text for 24 tokens"
    assert arrivals[-1] - arrivals[0] > 0


def test_n_choices(client, app):
    reply = client.completions.create(
        model=app.model, prompt="Pick a number:", max_tokens=4, n=2, temperature=1.0
    )
    assert sorted(c.index for c in reply.choices) == [0, 1]


def test_stop_string_ends_the_text_before_it(client, app):
    full = (
        client.completions.create(
            model=app.model,
            prompt="Water boils at",
            max_tokens=16,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    assert len(full) >= 4, f"too little text to pick a stop string from: {full!r}"
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    reply = client.completions.create(
        model=app.model,
        prompt="Water boils at",
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
        stop=[stop],
    )
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )


def test_too_many_tokens_is_a_400(client, app):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=app.model, prompt="Hi", max_tokens=100_000)
    assert "max" in str(err.value).lower() or "context" in str(err.value).lower()


def test_malformed_json_is_a_4xx(app):
    request = urllib.request.Request(
        f"{app.base_url}/chat/completions",
        data=b'{"model": "tiny", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert 400 <= err.value.code < 500


def _names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_request_counter_moves(client, app):
    def scrape() -> str:
        with urllib.request.urlopen(app.metrics_url, timeout=10) as resp:
            return resp.read().decode()

    # Serve's Python proxy counts requests; on the fast path HAProxy does, on its own exporter
    fast = getattr(app, "path", "standard") == "fast"
    counters = (
        ("haproxy_frontend_http_requests_total{",)
        if fast
        else ("ray_serve_num_http_requests_total{", "ray_serve_num_http_requests{")
    )

    def requests_served(text: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[-1])
            for line in text.splitlines()
            if line.startswith(counters)
        )

    before = requests_served(scrape())
    for _ in range(3):
        client.completions.create(model=app.model, prompt="Hello", max_tokens=2)
    deadline = time.monotonic() + 60
    while requests_served(scrape()) < before + 3:
        assert time.monotonic() < deadline, (
            f"{counters[0]} did not move: {sorted(_names(scrape()))}"
        )
        time.sleep(2)

    # the engine's metrics are exported by the node its replica runs on (the worker), pushed
    # there by the replica's process on an interval: wait for them, a busy machine delays it
    def engine_metrics() -> str:
        with urllib.request.urlopen(app.engine_metrics_url, timeout=10) as resp:
            return resp.read().decode().lower()

    deadline = time.monotonic() + 120
    while "vllm" not in engine_metrics():
        assert time.monotonic() < deadline, "the worker node never exported the engine's metrics"
        time.sleep(2)
