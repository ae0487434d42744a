"""The Ray Serve LLM application: vLLM behind Ray Serve's OpenAI-compatible API, with the
Alpaca prompt format. Ray Serve LLM does the serving; this module only builds its config.

The builder runs where Ray Serve imports the application (the head of a RayService); the
engine runs in an LLMServer replica, usually on another node (a GPU worker pod) with another
filesystem. So the config carries nothing that exists only on the builder's disk: the chat
template travels as text (vLLM's `chat_template` frontend argument takes the template itself),
and the model and adapter folders are paths on the shared cache volumes every pod mounts.
Which of Ray Serve's request paths the app is built for: `alpaca_serving.paths`.
"""

from __future__ import annotations

import os
from typing import Any

from alpaca_serving import paths
from alpaca_serving.config import ServingConfig
from alpaca_serving.templates import chat_template_for

PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
SERVER_CLS = "alpaca_serving.server:AlpacaLLMServer"
"""Every model's LLMServer class (LLMConfig loads it from this path)."""


def llm_config(config: ServingConfig) -> Any:
    """Ray Serve LLM's LLMConfig for our config."""
    from ray.serve.llm import LLMConfig

    from alpaca_serving.node_init import CALLBACK_CLASS

    engine = dict(config.engine_kwargs)
    template = chat_template_for(config.prompt_template)
    if template is not None:
        engine["chat_template"] = template
    # every model's replica runs our LLMServer (vLLM's logging, telemetry, adapter folders)
    kwargs: dict[str, Any] = {"server_cls": SERVER_CLS}
    if config.adapters:
        from alpaca_serving.adapters import ADAPTERS_KEY

        # Ray's multiplexing (N adapters per replica, LRU) with adapters read from folders
        kwargs["lora_config"] = {"max_num_adapters_per_replica": config.max_adapters_per_replica}
        kwargs["experimental_configs"] = {ADAPTERS_KEY: {a.name: a.path for a in config.adapters}}
        engine.setdefault("enable_lora", True)
        engine.setdefault("max_loras", min(config.max_adapters_per_replica, 8))
    deployment: dict[str, Any] = {
        "autoscaling_config": config.autoscaling.model_dump(exclude_none=True)
    }
    if config.request_router == "prefix_affinity":
        # the replica with the longest matching prefix: picked by the ingress's handle on the
        # standard path, by Ray's LLMRouter (which HAProxy asks) on the fast one
        deployment["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    if config.accelerator == "cpu":
        kwargs["accelerator_config"] = {"kind": "cpu"}
        # The engine's bundle is the replica's CPUs; the replica actor beside it asks for none
        # (Ray adds the actor's CPUs to the bundle: 1 more would not fit a worker pod that has
        # exactly the replica's CPUs).
        kwargs["placement_group_config"] = {"bundles": [{"CPU": config.cpus_per_replica}]}
        deployment["ray_actor_options"] = {"num_cpus": 0}
    else:
        engine.setdefault("tensor_parallel_size", max(config.gpus_per_replica, 1))
    # The model is a folder on the cache volume: no per-node fetch task before the engine starts
    kwargs["callback_config"] = {"callback_class": CALLBACK_CLASS}
    return LLMConfig(
        model_loading_config={
            "model_id": config.served_model_name,
            "model_source": config.model_path,
        },
        engine_kwargs=engine,
        deployment_config=deployment,
        log_engine_metrics=True,
        **kwargs,
    )


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (the serveConfigV2 import path points here).

    Its path is the process's (`paths.process_path`: the variable Ray Serve LLM's builder reads),
    not the config's: the pods' env or the local command chose it before Ray started.
    """
    from ray.serve.llm import build_openai_app

    config = ServingConfig.model_validate(args)
    fast = paths.process_path(os.environ) == "fast"
    if fast and paths.request_path(config) == "standard":
        why = "it has LoRA adapters" if config.adapters else "its request_path is standard"
        raise ValueError(
            f"{config.served_model_name} must be served on Ray Serve's standard path ({why}), "
            f"but this Ray process runs the fast path ({paths.DIRECT_STREAMING}=1 in its "
            f"environment): start Ray without {', '.join(paths.FAST_PATH_ENV)}"
        )
    builder: dict[str, Any] = {"llm_configs": [llm_config(config)]}
    if fast:
        # the LLMServer is the ingress: Ray's builder takes no ingress deployment or class
        if config.request_router == "least_connections":
            return _balanced_by_haproxy(builder)
        return build_openai_app(builder)
    # The OpenAI ingress only routes: it asks for no CPU, so it runs beside Serve's proxy
    # on the head (which offers none) or next to a replica, never waiting for a CPU that
    # the replicas' pods do not have to spare (Serve's default would ask for one).
    builder["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
    if config.adapters:
        from alpaca_serving.adapters import AlpacaIngress

        names = [a.name for a in config.adapters]
        builder["ingress_cls_config"] = {
            "ingress_cls": AlpacaIngress,
            "ingress_extra_kwargs": {"adapters": {config.served_model_name: names}},
        }
    return build_openai_app(builder)


def _balanced_by_haproxy(builder: dict[str, Any]) -> Any:
    """The fast path without Ray's LLMRouter: HAProxy balances the LLMServer replicas itself
    (`leastconn`, Ray's default for it) instead of asking a Python deployment over HTTP which
    replica takes each request. What Ray's direct-streaming builder does (the LLMServer class
    as a Serve ingress), minus the LLMRouter and the round-robin router it sets for it: Ray
    refuses a custom router on an ingress that HAProxy balances. Ray 2.60's own functions (the
    version is pinned; a unit test builds this)."""
    from ray import serve
    from ray.llm._internal.serve.core.ingress.builder import LLMServingArgs
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.llm._internal.serve.core.server.llm_server import LLMServer

    [llm] = LLMServingArgs.model_validate(builder).llm_configs
    server_cls = llm.server_cls or LLMServer
    return build_llm_deployment(llm, deployment_cls=serve.ingress()(server_cls))
