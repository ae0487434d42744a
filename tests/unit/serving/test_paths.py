"""Ray Serve's fast request path by default, the standard one for LoRA adapters (decision 39):
the rule, the builder's arguments on each path and the local command's --request-path."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from alpaca_serving import paths
from alpaca_serving.config import ServingConfig
from alpaca_serving.serve_config import application_entry

BASE = {"model_path": "/models/m", "served_model_name": "m", "accelerator": "cpu"}
ADAPTERS = [{"name": "sql", "path": "/models/sql-cache"}]
FAST_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    "RAY_SERVE_DEFAULT_HTTP_HOST": "0.0.0.0",
}


def _config(**fields: Any) -> ServingConfig:
    return ServingConfig.model_validate({**BASE, **fields})


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({}, "fast"),
        ({"request_path": "fast"}, "fast"),
        ({"request_path": "standard"}, "standard"),
        ({"adapters": ADAPTERS}, "standard"),
        ({"adapters": ADAPTERS, "request_path": "standard"}, "standard"),
    ],
)
def test_fast_unless_adapters_or_forced_standard(fields, path):
    assert paths.request_path(_config(**fields)) == path


def test_fast_with_adapters_is_refused_naming_the_field_and_why():
    with pytest.raises(ValidationError) as refused:
        _config(adapters=ADAPTERS, request_path="fast")
    message = str(refused.value)
    assert "request_path: fast cannot serve LoRA adapters (adapters)" in message
    assert "multiplexed model id" in message and "use auto or standard" in message


def test_the_fast_path_environment():
    assert paths.FAST_PATH_ENV == FAST_ENV
    assert paths.environment("fast") == FAST_ENV
    assert paths.environment("standard") == {}


def test_prefix_routing_on_the_fast_path_forwards_the_body():
    """HAProxy asks Ray's LLMRouter for a replica; a prefix-aware router needs the prompt."""
    prefix = _config(request_router="prefix_affinity")
    assert paths.request_path(prefix) == "fast"
    assert paths.environment("fast", prefix) == {**FAST_ENV, paths.FORWARD_BODY: "1"}
    assert paths.environment("fast", _config()) == FAST_ENV
    assert paths.environment("standard", prefix) == {}


@pytest.mark.parametrize(
    ("environ", "path"),
    [({}, "standard"), ({paths.DIRECT_STREAMING: "0"}, "standard"), (FAST_ENV, "fast")],
)
def test_the_process_path_is_what_ray_serve_llm_reads(environ, path):
    assert paths.process_path(environ) == path
    # Ray compares with "1": another truthy spelling is not the fast path to it
    assert paths.process_path({paths.DIRECT_STREAMING: "true"}) == "standard"


def test_the_entry_leaves_auto_out_and_keeps_a_forced_path():
    """The entry of a model rendered before the field existed is unchanged (no Serve redeploy)."""
    assert "request_path" not in application_entry(_config())["args"]
    forced = application_entry(_config(request_path="standard"))["args"]
    assert forced["request_path"] == "standard"
    assert ServingConfig.model_validate(forced) == _config(request_path="standard")


def test_the_entry_leaves_the_default_router_out():
    assert "request_router" not in application_entry(_config())["args"]
    assert (
        "request_router"
        not in application_entry(_config(request_router="least_connections"))["args"]
    )
    for router in ("prefix_affinity", "ray"):
        entry = application_entry(_config(request_router=router))["args"]
        assert entry["request_router"] == router


# --- app.build_app: Ray Serve LLM's builder arguments on each path (no Ray started) ---


@pytest.fixture
def builder_args(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What build_app hands Ray Serve LLM's build_openai_app, captured instead of building."""
    pytest.importorskip("ray.serve.llm")
    import ray.serve.llm

    for key in FAST_ENV:
        monkeypatch.delenv(key, raising=False)
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(ray.serve.llm, "build_openai_app", lambda b: seen.append(b) or "app")
    return seen


def test_standard_path_builder_is_as_before(builder_args):
    from alpaca_serving.adapters import AlpacaIngress
    from alpaca_serving.app import build_app

    assert build_app(BASE) == "app"
    assert build_app({**BASE, "adapters": ADAPTERS}) == "app"
    plain, adapted = builder_args
    assert set(plain) == {"llm_configs", "ingress_deployment_config"}
    assert plain["ingress_deployment_config"] == {"ray_actor_options": {"num_cpus": 0}}
    assert set(adapted) == {"llm_configs", "ingress_deployment_config", "ingress_cls_config"}
    assert adapted["ingress_cls_config"] == {
        "ingress_cls": AlpacaIngress,
        "ingress_extra_kwargs": {"adapters": {"m": ["sql"]}},
    }
    # a config that would take the fast path is still built on a process without it
    assert [c.model_id for c in plain["llm_configs"]] == ["m"]


def test_fast_path_builder_has_no_ingress_of_ours(builder_args, monkeypatch):
    """With a router in Ray's LLMRouter (`ray`, `prefix_affinity`) Ray's builder builds the
    fast path, handed only the LLMConfig."""
    from ray.llm._internal.serve.core.ingress.builder import (
        LLMServingArgs,
        _validate_direct_streaming_ingress_config,
    )

    from alpaca_serving.app import build_app

    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    assert build_app({**BASE, "request_router": "ray"}) == "app"
    [builder] = builder_args
    assert set(builder) == {"llm_configs"} and len(builder["llm_configs"]) == 1
    # what Ray's builder checks under direct streaming, passed
    args = LLMServingArgs.model_validate(builder)
    _validate_direct_streaming_ingress_config(
        args.ingress_deployment_config, args.ingress_cls_config
    )


@pytest.mark.parametrize(
    ("fields", "why"),
    [({"adapters": ADAPTERS}, "it has LoRA adapters"), ({"request_path": "standard"}, "standard")],
)
def test_fast_process_refuses_a_standard_config(builder_args, monkeypatch, fields, why):
    from alpaca_serving.app import build_app

    monkeypatch.setenv(paths.DIRECT_STREAMING, "1")
    with pytest.raises(ValueError, match="must be served on Ray Serve's standard path") as e:
        build_app({**BASE, **fields})
    assert why in str(e.value) and "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1" in str(e.value)
    assert builder_args == []


# --- the local command: --request-path, and the environment Ray starts with ---


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """`python -m alpaca_serving serve` up to starting Ray: what it would start it with."""
    import alpaca_serving.__main__ as command

    for key in FAST_ENV:
        monkeypatch.delenv(key, raising=False)
    started: dict[str, Any] = {}

    def run_app(args: argparse.Namespace, config: ServingConfig) -> int:
        started.update(config=config, env={k: os.environ[k] for k in FAST_ENV if k in os.environ})
        files = paths.haproxy_files("")
        started["haproxy"] = {k: os.environ[k] for k in files if k in os.environ}
        return 0

    monkeypatch.setattr(command, "run_app", run_app)
    (tmp_path / "m").mkdir()
    started["model"] = str(tmp_path / "m")
    return started


def _serve(local: dict[str, Any], *flags: str) -> int:
    from alpaca_serving.__main__ import main

    return main(["serve", "--model", local["model"], "--cpu", *flags])


def test_local_command_takes_the_fast_path_by_default(local, capsys):
    assert _serve(local) == 0
    assert local["env"] == FAST_ENV
    assert local["config"].request_path == "auto"
    assert "Ray Serve's fast request path" in capsys.readouterr().err


def test_local_command_standard_path_takes_the_variables_out(local, monkeypatch, capsys):
    for key, value in FAST_ENV.items():  # exported in the user's shell
        monkeypatch.setenv(key, value)
    assert _serve(local, "--request-path", "standard") == 0
    assert local["env"] == {}
    assert local["config"].request_path == "standard"
    assert "Ray Serve's standard request path" in capsys.readouterr().err


def test_local_command_with_adapters_takes_the_standard_path(local, tmp_path, capsys):
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"adapters": [{"name": "sql", "path": str(tmp_path)}]}))
    assert _serve(local, "--config", str(config)) == 0
    assert local["env"] == {}
    assert "for the LoRA adapters" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        _serve(local, "--config", str(config), "--request-path", "fast")
    assert refused.value.code == 2
    assert "request_path: fast cannot serve LoRA adapters" in capsys.readouterr().err


def test_local_command_flag_overrides_the_config_file(local, tmp_path):
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"request_path": "standard"}))
    assert _serve(local, "--config", str(config)) == 0
    assert local["env"] == {}
    assert _serve(local, "--config", str(config), "--request-path", "auto") == 0
    assert local["env"] == FAST_ENV


def test_local_command_keeps_haproxys_files_in_a_folder_of_its_own(local, monkeypatch):
    """Ray puts them under a fixed /tmp/haproxy-serve unless told otherwise: two servers on one
    workstation would share them. The folder goes when the command ends."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(Path(local["model"]).parent))
    assert _serve(local) == 0
    files = local["haproxy"]
    assert set(files) == set(paths.haproxy_files(""))
    folder = Path(files["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert folder.parent == Path(paths.haproxy_parent(str(Path(local["model"]).parent)))
    assert all(Path(v).parent == folder for k, v in files.items() if not k.endswith("BASE"))
    assert not folder.exists()
    assert not any(k in os.environ for k in files)
    assert _serve(local, "--request-path", "standard") == 0
    assert local["haproxy"] == {}


def test_haproxy_files_cover_every_path_ray_keeps_under_tmp():
    """Each HAProxy file Ray defaults to /tmp/haproxy-serve is one we move (read from the
    installed Ray, so an upgrade that adds one fails here)."""
    import re

    constants = pytest.importorskip("ray.serve._private.constants")
    text = Path(constants.__file__).read_text()
    defaults = set(re.findall(r'"(RAY_SERVE_HAPROXY_\w+)",\s*"/tmp/haproxy-serve', text))
    assert defaults
    assert defaults == set(paths.haproxy_files(""))


def test_haproxys_folder_leaves_its_sockets_within_haproxys_limit():
    """Ray adds a 56-digit node folder under it; HAProxy refuses socket paths over 97."""
    assert paths.haproxy_parent("/tmp/r") == "/tmp/r"
    deep = "/tmp/" + "d" * 40
    assert paths.haproxy_parent(deep) == "/tmp"
    for temp in ("/tmp", "/tmp/r", deep):
        parent = paths.haproxy_parent(temp)
        sock = f"{parent}/haproxy-12345678/{'0' * 56}/metrics.sock"
        assert len(sock) <= paths.HAPROXY_SOCKET_PATH_MAX


@pytest.mark.parametrize("fast", [False, True])
def test_prefix_router_reaches_ray_on_both_paths(builder_args, monkeypatch, fast):
    """The LLM deployment names Ray Serve LLM's PrefixCacheAffinityRouter (a class Ray can
    import), and Ray's direct-streaming builder keeps it instead of its round robin."""
    from ray._common.utils import import_attr
    from ray.llm._internal.serve.core.ingress.builder import _get_direct_streaming_serve_options

    from alpaca_serving.app import PREFIX_ROUTER, build_app

    if fast:
        for key, value in FAST_ENV.items():
            monkeypatch.setenv(key, value)
    build_app({**BASE, "request_router": "prefix_affinity"})
    build_app({**BASE, "request_router": "ray"})
    prefix, rays = (b["llm_configs"][0] for b in builder_args)
    assert prefix.deployment_config["request_router_config"] == {
        "request_router_class": PREFIX_ROUTER
    }
    assert "request_router_config" not in rays.deployment_config
    assert import_attr(PREFIX_ROUTER).__name__ == "PrefixCacheAffinityRouter"
    assert _get_direct_streaming_serve_options(prefix) == {}
    assert "request_router_config" in _get_direct_streaming_serve_options(rays)


def test_least_connections_leaves_the_replica_to_haproxy(builder_args, monkeypatch):
    """On the fast path, `least_connections` (the default) builds Ray's direct-streaming
    LLMServer ingress without the LLMRouter HAProxy would ask per request; on the standard
    path it is Serve's default router."""
    from types import SimpleNamespace

    import ray
    from ray.serve.deployment import Application

    # The LLMServer's deployment options read the runtime env of the Ray process the builder
    # runs in (always one, in Serve); here that read would start a whole local Ray, under /tmp
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(runtime_env={}))

    from alpaca_serving.app import build_app

    assert ServingConfig.model_validate(BASE).request_router == "least_connections"
    build_app(BASE)
    [standard] = builder_args
    assert "request_router_config" not in standard["llm_configs"][0].deployment_config
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    app = build_app(BASE)
    assert len(builder_args) == 1  # not Ray's builder: it would attach the LLMRouter
    assert isinstance(app, Application)
    assert app._ingress_request_router is None
    assert app._bound_deployment.name == "AlpacaLLMServer:m"  # our LLMServer (server.py)
    # what Ray's build refuses under HAProxy without an ingress request router: a custom one
    from ray.serve._private.build_app import _has_custom_request_router

    assert not _has_custom_request_router(app._bound_deployment)
