"""policy.py: image overrides only from allowed prefixes, no engine argument that runs code from
outside the image unless the administrator allows it; each refusal names its field."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator import cli, policy
from alpaca_operator.accept import accept
from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec
from alpaca_operator.config import KUBERAY_NAMESPACE, OperatorConfig, image_repository

CONFIG = OperatorConfig(
    serving_image="ghcr.io/alpaca-dev/alpaca-serving:0.2.0",
    weights_image="ghcr.io/alpaca-dev/alpaca-weights:0.2.0",
    training_image="registry.local:5000/ml/alpaca-training@sha256:" + "a" * 64,
)
DEFAULT_REPOS = (
    "ghcr.io/alpaca-dev/alpaca-serving",
    "ghcr.io/alpaca-dev/alpaca-weights",
    "registry.local:5000/ml/alpaca-training",
)


def _model(**spec: Any) -> AlpacaModelSpec:
    return AlpacaModelSpec.model_validate({"weights": {"source": "hf://org/m"}, **spec})


def _finetune(**spec: Any) -> AlpacaFineTuneSpec:
    return AlpacaFineTuneSpec.model_validate(
        {"baseModel": {"source": "hf://org/base"}, "dataset": {"source": "/d.json"}, **spec}
    )


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/a/b:1.0", "ghcr.io/a/b"),
        ("ghcr.io/a/b", "ghcr.io/a/b"),
        ("host:5000/a/b", "host:5000/a/b"),
        ("host:5000/a/b:tag@sha256:abc", "host:5000/a/b"),
        ("python:3.11-slim", "python"),
    ],
)
def test_image_repository_drops_tag_and_digest(image, repository):
    assert image_repository(image) == repository


def test_the_default_images_repositories_are_always_allowed():
    assert CONFIG.image_prefixes == DEFAULT_REPOS
    more = OperatorConfig(
        allowed_image_prefixes=("ghcr.io/team/", "ghcr.io/alpaca-dev/alpaca-serving")
    )
    assert more.image_prefixes[-1] == "ghcr.io/team/"  # no repeats
    assert len(more.image_prefixes) == len(set(more.image_prefixes)) == 4


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/alpaca-dev/alpaca-serving:0.3.0", True),  # another tag of a default
        ("ghcr.io/alpaca-dev/alpaca-serving@sha256:" + "b" * 64, True),
        ("ghcr.io/alpaca-dev/alpaca-serving", True),
        ("ghcr.io/alpaca-dev/alpaca-serving-evil:1", False),  # not at a name boundary
        ("ghcr.io/alpaca-dev/other:1", False),
        ("evil.example/alpaca-dev/alpaca-serving:1", False),
        ("ghcr.io/alpaca-dev/alpaca-serving.evil.example/x:1", False),
        ("registry.local:5000/ml/alpaca-training:1", True),
    ],
)
def test_images_are_matched_at_a_name_boundary(image, allowed):
    assert policy.image_allowed(image, CONFIG.image_prefixes) is allowed


def test_administrators_prefixes_and_the_wildcard():
    assert policy.image_allowed("ghcr.io/team/vllm:1", ["ghcr.io/team/"])
    assert policy.image_allowed("ghcr.io/team/vllm:1", ["ghcr.io/team"])
    assert not policy.image_allowed("ghcr.io/team-b/vllm:1", ["ghcr.io/team"])
    assert policy.image_allowed("ghcr.io/team/vllm:1", ["ghcr.io/team/vllm"])
    assert not policy.image_allowed("ghcr.io/team/vllm2:1", ["ghcr.io/team/vllm"])
    assert policy.image_allowed("anything.example/x:1", [policy.ANY_IMAGE])
    assert not policy.image_allowed("anything.example/x:1", [""])  # empty allows nothing


def test_a_forbidden_image_names_the_field_and_the_allowed_prefixes():
    problems = policy.model_problems(_model(images={"serving": "evil.example/ray:1"}), CONFIG)
    assert [p.field for p in problems] == ["spec.images.serving"]
    message = problems[0].message
    assert "'evil.example/ray:1'" in message
    assert all(repo in message for repo in DEFAULT_REPOS)
    assert "allowedImagePrefixes" in message
    weights = policy.model_problems(_model(images={"weights": "evil.example/w:1"}), CONFIG)
    assert [p.field for p in weights] == ["spec.images.weights"]


def test_a_long_image_is_shortened_in_the_message():
    problems = policy.model_problems(_model(images={"serving": "x/" + "a" * 5000}), CONFIG)
    assert len(problems[0].message) < 600


def test_defaults_and_allowed_overrides_pass():
    assert policy.model_problems(_model(), CONFIG) == []
    allowed = _model(images={"serving": "ghcr.io/alpaca-dev/alpaca-serving:0.2.0-cuda"})
    assert policy.model_problems(allowed, CONFIG) == []


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"trust_remote_code": True}, "spec.engine.extraArgs.trust_remote_code"),
        ({"trust-remote-code": True}, "spec.engine.extraArgs.trust-remote-code"),
        ({"trust_remote_code": "true"}, "spec.engine.extraArgs.trust_remote_code"),
        ({"worker_extension_cls": "m.C"}, "spec.engine.extraArgs.worker_extension_cls"),
        ({"worker_cls": "m.Worker"}, "spec.engine.extraArgs.worker_cls"),
        (
            {"distributed_executor_backend": "m.E"},
            "spec.engine.extraArgs.distributed_executor_backend",
        ),
        ({"logits_processors": ["m.P"]}, "spec.engine.extraArgs.logits_processors"),
        (
            {"model_class_overrides": {"Llama": "m:C"}},
            "spec.engine.extraArgs.model_class_overrides",
        ),
        (
            {"reasoning_parser_plugin": "/models/x/p.py"},
            "spec.engine.extraArgs.reasoning_parser_plugin",
        ),
        ({"log_config_file": "/models/x/log.json"}, "spec.engine.extraArgs.log_config_file"),
        (
            {"kv_transfer_config": {"kv_connector_module_path": "m"}},
            "spec.engine.extraArgs.kv_transfer_config.kv_connector_module_path",
        ),
        (
            {"kv_transfer_config": '{"kv_connector_module_path": "m"}'},  # JSON text
            "spec.engine.extraArgs.kv_transfer_config.kv_connector_module_path",
        ),
        (
            {"speculative_config": {"trust_remote_code": True}},
            "spec.engine.extraArgs.speculative_config.trust_remote_code",
        ),
        (
            {"compilation_config": {"backend": "m.f"}},
            "spec.engine.extraArgs.compilation_config.backend",
        ),
        (
            {"compilation_config": {"inductor_passes": {"a": "m.f"}}},
            "spec.engine.extraArgs.compilation_config.inductor_passes",
        ),
    ],
)
def test_engine_arguments_that_run_outside_code_are_refused(extra, field):
    problems = policy.model_problems(_model(engine={"extraArgs": extra}), CONFIG)
    assert [p.field for p in problems] == [field]
    assert "allowRemoteCode" in problems[0].message


@pytest.mark.parametrize(
    "extra",
    [
        {"trust_remote_code": False},
        {"worker_cls": "auto"},
        {"worker_extension_cls": ""},
        {"distributed_executor_backend": "ray"},
        {"logits_processors": []},
        {"compilation_config": {"backend": "inductor", "mode": 3}},
        {"enable_prefix_caching": True, "kv_cache_memory_bytes": 268435456, "enforce_eager": True},
        {"hf_overrides": {"backend": "m.f"}},  # only compilation_config's backend imports
    ],
)
def test_harmless_engine_arguments_pass(extra):
    assert policy.model_problems(_model(engine={"extraArgs": extra}), CONFIG) == []


def test_allow_remote_code_lets_them_through():
    spec = _model(engine={"extraArgs": {"trust_remote_code": True}})
    allowing = OperatorConfig(allow_remote_code=True)
    assert policy.model_problems(spec, allowing) == []


def test_a_finetune_s_image_and_served_engine_are_held_to_the_policy():
    spec = _finetune(
        image="evil.example/train:1",
        serve={"name": "served", "engine": {"extraArgs": {"trust_remote_code": True}}},
    )
    assert [p.field for p in policy.finetune_problems(spec, CONFIG)] == [
        "spec.image",
        "spec.serve.engine.extraArgs.trust_remote_code",
    ]
    # a run that succeeded runs its image no more (the field is immutable): not judged again
    assert [p.field for p in policy.finetune_problems(spec, CONFIG, trained=True)] == [
        "spec.serve.engine.extraArgs.trust_remote_code"
    ]
    assert policy.finetune_problems(_finetune(), CONFIG) == []


def test_a_refusal_is_the_accepted_condition_and_a_warning():
    raw = {"weights": {"source": "hf://org/m"}, "images": {"serving": "evil.example/ray:1"}}
    outcome = accept(
        raw,
        AlpacaModelSpec,
        2,
        {},
        "Pending",
        pending_message="",
        policy=lambda spec: policy.model_problems(spec, CONFIG),
    )
    assert outcome.status["phase"] == "Failed"
    by_type = {c["type"]: c for c in outcome.status["conditions"]}
    accepted = by_type["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "ForbiddenByPolicy")
    assert accepted["message"].startswith(
        "Not allowed by the operator's policy: spec.images.serving:"
    )
    assert by_type["Ready"]["reason"] == "ForbiddenByPolicy"
    assert ("Warning", "ForbiddenByPolicy") in [(e.type, e.reason) for e in outcome.events]
    # an invalid spec is said as such first: the policy judges only valid specs
    raw["autoscaling"] = {"minReplicas": -1}
    invalid = accept(
        raw, AlpacaModelSpec, 3, {}, "Pending", policy=lambda s: policy.model_problems(s, CONFIG)
    )
    assert invalid.status["conditions"][0]["reason"] == "InvalidSpec"


def test_command_line_settings():
    parse = cli.parser().parse_args
    assert cli.settings(parse(["run"])) == {
        "allowed_image_prefixes": (),
        "allow_remote_code": False,
    }
    assert OperatorConfig().dashboard_namespaces == (KUBERAY_NAMESPACE,)
    args = parse(
        [
            "run",
            "--allowed-image-prefix=ghcr.io/team/",
            "--allowed-image-prefix=*",
            "--allow-remote-code",
            "--ray-dashboard-namespace=ray",
            "--ray-dashboard-namespace=alpaca-system",
        ]
    )
    assert cli.settings(args) == {
        "allowed_image_prefixes": ("ghcr.io/team/", "*"),
        "allow_remote_code": True,
        "dashboard_namespaces": ("ray", "alpaca-system"),
    }


def test_deeply_nested_arguments_do_not_break_the_check():
    deep: dict[str, Any] = {"trust_remote_code": True}
    for _ in range(5000):
        deep = {"x": deep}
    problems = policy.model_problems(_model(engine={"extraArgs": deep}), CONFIG)
    assert len(problems) == 1 and problems[0].field.endswith(".x.trust_remote_code")
    text = "{" * 100_000
    assert policy.model_problems(_model(engine={"extraArgs": {"a": text}}), CONFIG) == []
