"""The Ray Serve LLM application: vLLM behind Ray Serve's OpenAI-compatible API, with the
Alpaca prompt format. Ray Serve LLM does the serving; this module only builds its config."""

from __future__ import annotations

from typing import Any

from alpaca_serving.config import ServingConfig
from alpaca_serving.tokenizer import link_adapters, prepare_tokenizer


def llm_config(config: ServingConfig) -> Any:
    """Ray Serve LLM's LLMConfig for our config (the tokenizer prepared on this node)."""
    from ray.serve.llm import LLMConfig

    engine = dict(config.engine_kwargs)
    engine["tokenizer"] = prepare_tokenizer(
        config.model_path, config.prompt_template, config.work_dir
    )
    kwargs: dict[str, Any] = {}
    if config.adapters:
        root = link_adapters([(a.name, a.path) for a in config.adapters], config.work_dir)
        kwargs["lora_config"] = {
            "dynamic_lora_loading_path": root,
            "max_num_adapters_per_replica": config.max_adapters_per_replica,
        }
        engine.setdefault("enable_lora", True)
        engine.setdefault("max_loras", min(config.max_adapters_per_replica, 8))
    if config.accelerator == "cpu":
        kwargs["accelerator_config"] = {"kind": "cpu"}
        kwargs["placement_group_config"] = {"bundles": [{"CPU": config.cpus_per_replica}]}
    else:
        engine.setdefault("tensor_parallel_size", max(config.gpus_per_replica, 1))
    return LLMConfig(
        model_loading_config={
            "model_id": config.served_model_name,
            "model_source": config.model_path,
        },
        engine_kwargs=engine,
        deployment_config={"autoscaling_config": config.autoscaling.model_dump(exclude_none=True)},
        log_engine_metrics=True,
        **kwargs,
    )


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (the serveConfigV2 import path points here)."""
    from ray.serve.llm import build_openai_app

    config = ServingConfig.model_validate(args)
    return build_openai_app({"llm_configs": [llm_config(config)]})
