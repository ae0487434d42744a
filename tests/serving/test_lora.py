"""LoRA adapters served by name: an adapter trained here by alpaca_training's LoRA recipe on a
tiny Llama, loaded by the real vLLM through Ray Serve LLM's multiplexing, from its folder."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.serving.conftest import Served, serve_app
from tests.training.conftest import PYTHON, make_config, subprocess_env
from tests.training.tiny_model import FIXTURE, build_tiny_llama

ADAPTER = "alpaca-lora"
PROMPT = "Below is an instruction that describes a task."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, adapter): a tiny Llama and a LoRA adapter fine-tuned on the Alpaca fixture."""
    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_llama(root / "base")
    data = root / "data"
    data.mkdir()
    (data / FIXTURE.name).write_text(FIXTURE.read_text())
    config = make_config(base, data, root / "out", method="lora")
    done = subprocess.run(
        [PYTHON, "-m", "alpaca_training"],
        env=subprocess_env(config, root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base, root / "out" / "final"


@pytest.fixture(scope="module")
def served_lora(trained: tuple[Path, Path]) -> Iterator[Served]:
    base, adapter = trained
    with serve_app(base, "m", adapters=[{"name": ADAPTER, "path": str(adapter)}]) as served:
        yield served


@pytest.fixture(scope="module")
def client(served_lora: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_lora.base_url, api_key="unused")


def _first_token_logprobs(client: openai.OpenAI, model: str) -> dict[str, float]:
    reply = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5
    )
    return dict(reply.choices[0].logprobs.top_logprobs[0])


def test_the_adapter_is_listed_under_its_name(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["m", f"m:{ADAPTER}"]
    assert client.models.retrieve(f"m:{ADAPTER}").id == f"m:{ADAPTER}"


def test_the_adapter_changes_what_the_model_says(client):
    base = _first_token_logprobs(client, "m")
    tuned = _first_token_logprobs(client, f"m:{ADAPTER}")
    assert base != tuned
    # and asking the base again gives the base's numbers: the adapter applies per request
    assert _first_token_logprobs(client, "m") == pytest.approx(base, abs=1e-3)


def test_chat_with_the_adapter_uses_the_alpaca_template(client):
    reply = client.chat.completions.create(
        model=f"m:{ADAPTER}",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == f"m:{ADAPTER}"
    assert reply.usage.prompt_tokens > 20  # the Alpaca preamble was added around the question


def test_an_unknown_adapter_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="m:nope", prompt=PROMPT, max_tokens=1)
    assert "no adapter named" in str(caught.value)
