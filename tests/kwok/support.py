"""What the KWOK tests share besides their fixtures: models whose weights KWOK "fills", and
waits on what the operator and the scheduler decided."""

from __future__ import annotations

import json
from typing import Any

from alpaca_dev.controlplane import ControlPlane, wait_for
from alpaca_dev.stack import example
from alpaca_operator.observe.model import condition_of
from alpaca_operator.render import names

KWOK_CLASS = {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"}
TIMEOUT = 240  # generous: seven controllers share this machine's two cores


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return condition_of(obj, type_) or {}


def reason(cp: ControlPlane, kind: str, name: str, ns: str, type_: str) -> str:
    return str(condition(cp.get_json(kind, name, ns), type_).get("reason", ""))


def wait_reason(
    cp: ControlPlane, kind: str, name: str, ns: str, type_: str, want: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    wait_for(
        lambda: reason(cp, kind, name, ns, type_) == want,
        f"{kind} {name} {type_}={want} (now {reason(cp, kind, name, ns, type_)})",
        timeout,
        interval=1,
    )
    return condition(cp.get_json(kind, name, ns), type_)


def model(name: str, **overrides: Any) -> dict[str, Any]:
    doc = example("alpaca.yaml", **overrides)
    doc["metadata"]["name"] = name
    weights = doc["spec"]["weights"]
    weights.pop("recover"), weights.pop("credentialsSecret")
    weights["source"] = "http://127.0.0.1:9/alpaca-7b/"  # KWOK never runs the fill
    return dict(doc)


def worker_pods(cp: ControlPlane, ns: str, model: str) -> list[dict[str, Any]]:
    selector = f"ray.io/node-type=worker,{names.LABEL_MODEL}={model}"
    out = cp.kubectl_run("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def running_on(cp: ControlPlane, ns: str, model: str) -> set[str]:
    return {
        p["spec"].get("nodeName", "")
        for p in worker_pods(cp, ns, model)
        if p.get("status", {}).get("phase") == "Running"
    }
