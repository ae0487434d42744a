"""The API models: Stanford Alpaca's defaults, scalar types, and errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.api.base import parse_duration

FT = {"baseModel": {"source": "hf://org/base"}, "dataset": {"source": "s3://d/alpaca.json"}}


def test_stanford_alpaca_defaults():
    spec = AlpacaFineTuneSpec.model_validate(FT)
    hp = spec.hyperparameters
    assert (hp.global_batch_size, hp.per_device_batch_size, hp.epochs, hp.max_length) == (
        128,
        4,
        3,
        512,
    )
    assert (hp.weight_decay, hp.warmup_ratio, hp.lr_scheduler, hp.precision) == (
        0.0,
        0.03,
        "cosine",
        "bf16",
    )
    assert spec.method == "full"
    assert hp.effective_learning_rate("full") == 2e-5


def test_alpaca_lora_defaults():
    spec = AlpacaFineTuneSpec.model_validate({**FT, "method": "lora", "lora": {}})
    assert spec.lora is not None
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (8, 16, 0.05)
    assert spec.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.hyperparameters.effective_learning_rate("lora") == 3e-4
    explicit = AlpacaFineTuneSpec.model_validate({**FT, "hyperparameters": {"learningRate": 1e-4}})
    assert explicit.hyperparameters.effective_learning_rate("lora") == 1e-4


def test_model_defaults_round_trip_in_camel_case():
    spec = AlpacaModelSpec.model_validate({"weights": {"source": "hf://org/m"}})
    wire = spec.to_wire()
    assert wire["autoscaling"] == {
        "minReplicas": 1,
        "maxReplicas": 1,
        "targetOngoingRequests": 16,
        "scaleToZeroDelay": "15m",
    }
    assert wire["prompt"] == {"template": "alpaca"}
    assert wire["weights"]["cache"] == {"size": "50Gi", "accessMode": "ReadWriteMany"}
    assert AlpacaModelSpec.model_validate(wire) == spec


@pytest.mark.parametrize("value", [8, "8", "500m", "32Gi", "1.5", "2e3"])
def test_quantities_accepted(value):
    spec = AlpacaModelSpec.model_validate(
        {"weights": {"source": "/m"}, "resources": {"cpu": value}}
    )
    assert spec.resources.cpu == str(value)


@pytest.mark.parametrize("value", ["lots", "32 Gi", "", True])
def test_quantities_rejected_with_field(value):
    with pytest.raises(ValidationError) as err:
        AlpacaModelSpec.model_validate(
            {"weights": {"source": "/m"}, "resources": {"memory": value}}
        )
    assert err.value.errors()[0]["loc"] == ("resources", "memory")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("250ms", 0.25)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1d", "m5"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_unknown_fields_rejected():
    with pytest.raises(ValidationError) as err:
        AlpacaModelSpec.model_validate({"weights": {"source": "/m", "sourc": "x"}})
    assert err.value.errors()[0]["loc"] == ("weights", "sourc")


@pytest.mark.parametrize(
    ("memory", "ok"),
    [
        ("3Gi", True),
        ("4Gi", True),
        (3221225472, True),
        ("2Gi", False),
        ("3000Mi", False),
        ("3G", False),
    ],
)
def test_the_head_gets_at_least_3gi(memory, ok):
    from alpaca_operator.api.model import Head

    if ok:
        assert Head(memory=memory).memory == str(memory)
    else:
        with pytest.raises(ValueError, match=r"head\.memory must be at least 3Gi"):
            Head(memory=memory)


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("https://models.example/alpaca/", True),
        ("https://models.example/team@2024/alpaca/", True),  # an @ in the path is no userinfo
        ("hf://org/model", True),
        ("https://user:hunter2@models.example/alpaca/", False),
        ("s3://AKIAKEY:secret@bucket/prefix", False),
        ("http://token@host/", False),
    ],
)
def test_sources_never_carry_credentials(source, ok):
    from alpaca_operator.api.weights import Weights

    if ok:
        assert Weights(source=source).source == source
    else:
        with pytest.raises(ValueError, match="must not carry credentials"):
            Weights(source=source)


@pytest.mark.parametrize(
    ("drain", "ok"),
    [("10s", True), ("90s", True), ("24h", True), ("5s", False), ("0s", False), ("25h", False)],
)
def test_drain_time_is_between_10s_and_a_day(drain, ok):
    spec = {"weights": {"source": "hf://org/model"}, "upgrade": {"drainTime": drain}}
    if ok:
        assert AlpacaModelSpec.model_validate(spec).upgrade.drain_time == drain
    else:
        with pytest.raises(ValidationError, match="drainTime must be between 10s and 24h"):
            AlpacaModelSpec.model_validate(spec)
