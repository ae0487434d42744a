"""Which request path a serving application takes: Ray Serve's fast path or its standard one.

fast: HAProxy on every Ray node instead of Serve's Python proxy, replicas that take requests on
ports of their own (direct ingress), and the LLMServer deployment as the application's ingress
(direct streaming: no OpenAI ingress deployment between proxy and engine).
standard: Serve's Python proxy, an OpenAI ingress deployment (ours with adapters), then the
LLMServer.

Ray reads these variables once, when its modules are imported, in every Ray process: the Serve
controller and the builder on the head, the proxies on every node, the replicas. So they are
container env of every Ray pod (the operator) or set before `ray.init()` (the local command);
the builder (`app.build_app`) reads the same variable Ray does to know which path it is on.

LoRA adapters need the standard path: Serve's HAProxy ingress ignores the multiplexed model id
that Ray Serve LLM's adapter multiplexing routes on, and our ingress (which lists the adapters
in /v1/models) is an ingress deployment the fast path has none of. Pure: no Ray, no vLLM.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Final, Literal

from alpaca_serving.config import ServingConfig

RequestPath = Literal["fast", "standard"]

DIRECT_STREAMING: Final = "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"
"""What Ray Serve LLM's builder reads (`== "1"`) to make the LLMServer the ingress."""

FAST_PATH_ENV: Final[Mapping[str, str]] = {
    # HAProxy replaces Serve's Python proxy on every node (it implies direct ingress)
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # gRPC between deployments, direct ingress, GC frozen after start-up
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # the LLMServer is the ingress: no OpenAI ingress deployment in between
    DIRECT_STREAMING: "1",
    # replicas listen on every interface: HAProxy on other nodes sends to them (Ray 2.60 forces
    # this under HAProxy; set as its docs ask for clusters of several nodes)
    "RAY_SERVE_DEFAULT_HTTP_HOST": "0.0.0.0",
}


FORWARD_BODY: Final = "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"
"""On the fast path HAProxy asks Ray's LLMRouter which replica takes each request; with this
it sends the request's body too, which a prefix-aware router needs (HAProxy's Lua and the
builder read it)."""

VARIABLES: Final = (*FAST_PATH_ENV, FORWARD_BODY)
"""Every variable `environment` may set."""


def request_path(config: ServingConfig) -> RequestPath:
    """The path `config` is served on: fast unless forced standard or it has LoRA adapters
    (`request_path: fast` with adapters is refused when the config is validated)."""
    if config.request_path == "standard" or config.adapters:
        return "standard"
    return "fast"


def environment(path: RequestPath, config: ServingConfig | None = None) -> dict[str, str]:
    """The variables every Ray process of the application needs for `path` (and, on the fast
    path, for `config`'s request router)."""
    if path != "fast":
        return {}
    env = dict(FAST_PATH_ENV)
    if config is not None and config.request_router == "prefix_affinity":
        env[FORWARD_BODY] = "1"
    return env


def process_path(environ: Mapping[str, str]) -> RequestPath:
    """The path Ray takes in a process with this environment (what Ray Serve LLM reads)."""
    return "fast" if environ.get(DIRECT_STREAMING) == "1" else "standard"


HAPROXY_SOCKET_PATH_MAX: Final = 97
"""HAProxy refuses a longer socket path."""
# what Ray adds under the folder it is given: a node-id folder (56 hex digits), then the file
_UNDER_FOLDER: Final = len("/") + 56 + len("/metrics.sock")


def haproxy_parent(temp: str | None = None) -> str:
    """Where the command's HAProxy folder (`haproxy-` and 8 random characters) goes: the
    temporary folder, unless its path is too long for HAProxy's sockets, then /tmp."""
    temp = temp or tempfile.gettempdir()
    longest = len(temp) + len("/haproxy-12345678") + _UNDER_FOLDER
    return temp if longest <= HAPROXY_SOCKET_PATH_MAX else "/tmp"


def haproxy_files(folder: str) -> dict[str, str]:
    """The variables that put HAProxy's files (config, admin and metrics sockets, server state)
    in `folder` instead of Ray's fixed /tmp/haproxy-serve."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
    }
