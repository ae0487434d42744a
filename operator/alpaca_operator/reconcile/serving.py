"""The serveConfigV2 application entry of an AlpacaModel, from alpaca_serving's own renderer:
the RayService runs exactly the application `python -m alpaca_serving` runs on a workstation."""

from __future__ import annotations

from typing import Any

from alpaca_operator.api.base import parse_cpu, parse_duration
from alpaca_operator.api.model import AlpacaModelSpec
from alpaca_operator.render import names, rayservice
from alpaca_serving.config import Adapter, Autoscaling, ServingConfig
from alpaca_serving.serve_config import application_entry


def serving_config(spec: AlpacaModelSpec, model_path: str, served_name: str) -> ServingConfig:
    """The serving application's config for an AlpacaModel."""
    engine: dict[str, Any] = {
        "dtype": spec.engine.dtype,
        "gpu_memory_utilization": spec.engine.gpu_memory_utilization,
        **spec.engine.extra_args,
    }
    if spec.engine.max_model_len:
        engine["max_model_len"] = spec.engine.max_model_len
    if spec.engine.quantization:
        engine["quantization"] = spec.engine.quantization
    if spec.resources.gpus > 0:
        engine["tensor_parallel_size"] = spec.engine.tensor_parallel_size
    scaling = spec.autoscaling
    template = spec.prompt.custom if spec.prompt.template == "custom" else spec.prompt.template
    return ServingConfig(
        model_path=model_path,
        served_model_name=served_name,
        prompt_template=template or "alpaca",
        engine_kwargs=engine,
        autoscaling=Autoscaling(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            target_ongoing_requests=scaling.target_ongoing_requests,
            downscale_to_zero_delay_s=parse_duration(scaling.scale_to_zero_delay),
        ),
        accelerator="gpu" if spec.resources.gpus > 0 else "cpu",
        gpus_per_replica=spec.resources.gpus,
        # a CPU replica's engine takes its whole worker pod (KubeRay gives Ray the pod's CPUs)
        cpus_per_replica=parse_cpu(spec.resources.cpu),
        adapters=[
            Adapter(
                name=a.name,
                path=rayservice.model_path(names.cache_name(a.as_weights(spec.weights))),
            )
            for a in spec.adapters
        ],
    )


def application_for(spec: AlpacaModelSpec, model_path: str, served_name: str) -> dict[str, Any]:
    """The Ray Serve LLM application (import path + args) for the spec."""
    return application_entry(serving_config(spec, model_path, served_name))
