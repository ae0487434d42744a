"""reconcile/serving.py: the serving application's config, from an AlpacaModel spec."""

from __future__ import annotations

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for, serving_config
from alpaca_operator.render import names, rayservice
from alpaca_serving.serve_config import IMPORT_PATH

from .support import example


def _spec(name: str) -> AlpacaModelSpec:
    return AlpacaModelSpec.model_validate(example(name)["spec"])


def test_a_gpu_model_asks_for_tensor_parallelism_and_its_gpus():
    config = serving_config(_spec("alpaca.yaml"), "/models/m", "alpaca-7b")
    assert config.accelerator == "gpu" and config.gpus_per_replica == 1
    assert config.engine_kwargs["tensor_parallel_size"] == 1
    assert config.engine_kwargs["max_model_len"] == 2048
    assert config.prompt_template == "alpaca"
    assert (config.autoscaling.min_replicas, config.autoscaling.max_replicas) == (1, 4)


def test_a_cpu_replica_takes_its_whole_pod_and_no_tensor_parallelism():
    config = serving_config(_spec("alpaca-local.yaml"), "/models/m", "smollm2")
    assert config.accelerator == "cpu" and config.gpus_per_replica == 0
    assert config.cpus_per_replica == 1.0
    assert "tensor_parallel_size" not in config.engine_kwargs
    assert config.engine_kwargs["enforce_eager"] is True  # extraArgs pass through


def test_adapters_are_served_from_their_own_caches_and_scale_to_zero_has_a_delay():
    spec = _spec("alpaca-karpenter.yaml")
    config = serving_config(spec, "/models/m", "alpaca-7b")
    assert [(a.name, a.path) for a in config.adapters] == [
        (a.name, rayservice.model_path(names.cache_name(a.as_weights(spec.weights))))
        for a in spec.adapters
    ]
    assert config.autoscaling.min_replicas == 0
    assert config.autoscaling.downscale_to_zero_delay_s == 20 * 60


def test_a_custom_prompt_template_is_passed_as_it_is():
    doc = example("alpaca-local.yaml")
    doc["spec"]["prompt"] = {"template": "custom", "custom": "{{ messages }}"}
    config = serving_config(AlpacaModelSpec.model_validate(doc["spec"]), "/m", "x")
    assert config.prompt_template == "{{ messages }}"


def test_the_application_entry_runs_the_serving_packages_builder():
    entry = application_for(_spec("alpaca-local.yaml"), "/models/m", "smollm2")
    assert entry["import_path"] == IMPORT_PATH
    assert entry["args"]["model_path"] == "/models/m"
    assert entry["args"]["served_model_name"] == "smollm2"
