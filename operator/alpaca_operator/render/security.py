"""Pod and container security settings shared by every pod the operator renders."""

from __future__ import annotations

from typing import Any

RUN_AS = 1000


def pod_security(fs_group: bool = True) -> dict[str, Any]:
    """Non-root, default seccomp; fsGroup so mounted volumes are writable by the user."""
    ctx: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if fs_group:
        ctx["fsGroup"] = RUN_AS
        ctx["fsGroupChangePolicy"] = "OnRootMismatch"
    return ctx


def container_security(read_only_root: bool = True) -> dict[str, Any]:
    """No privilege escalation, no capabilities; read-only root where the workload allows."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


def verbatim(text: str) -> str:
    """`text` as the container must see it in `command`, `args` or an env `value`: the kubelet
    expands `$(VAR)` there from the container's environment (and reduces `$$` to `$`), so a spec
    field such as `weights.source: https://host/$(HF_TOKEN)/` would carry a Secret's token to
    any host, and into status and Events. Every `$` doubled comes out as the `$` written."""
    return text.replace("$", "$$")
