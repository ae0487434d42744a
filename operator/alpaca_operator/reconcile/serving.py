"""The serveConfigV2 application entry of an AlpacaModel, from alpaca_serving's renderer."""

from __future__ import annotations

from typing import Any

from alpaca_operator.api.base import parse_duration
from alpaca_operator.api.model import AlpacaModelSpec


def application_for(spec: AlpacaModelSpec, model_path: str, served_name: str) -> dict[str, Any]:
    """The Ray Serve LLM application for the spec (import path + args)."""
    engine: dict[str, Any] = {
        "dtype": spec.engine.dtype,
        "tensor_parallel_size": spec.engine.tensor_parallel_size,
        "gpu_memory_utilization": spec.engine.gpu_memory_utilization,
        **spec.engine.extra_args,
    }
    if spec.engine.max_model_len:
        engine["max_model_len"] = spec.engine.max_model_len
    if spec.engine.quantization:
        engine["quantization"] = spec.engine.quantization
    scaling = spec.autoscaling
    return {
        "name": "alpaca",
        "route_prefix": "/",
        "import_path": "ray.serve.llm:build_openai_app",
        "args": {
            "llm_configs": [
                {
                    "model_loading_config": {"model_id": served_name, "model_source": model_path},
                    "engine_kwargs": engine,
                    "deployment_config": {
                        "autoscaling_config": {
                            "min_replicas": scaling.min_replicas,
                            "max_replicas": scaling.max_replicas,
                            "target_ongoing_requests": scaling.target_ongoing_requests,
                            "downscale_to_zero_delay_s": parse_duration(
                                scaling.scale_to_zero_delay
                            ),
                        }
                    },
                }
            ]
        },
    }
