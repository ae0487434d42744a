"""The KubeRay serveConfigV2 application entry for a ServingConfig. Pure: no Ray, no I/O.

The operator calls exactly this function, so the RayService runs the same application a
workstation runs with `python -m alpaca_serving serve`.
"""

from __future__ import annotations

from typing import Any

from alpaca_serving.config import ServingConfig

APP_NAME = "alpaca"
IMPORT_PATH = "alpaca_serving.app:build_app"


def application_entry(config: ServingConfig, route_prefix: str = "/") -> dict[str, Any]:
    """One entry of serveConfigV2's `applications`."""
    return {
        "name": APP_NAME,
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        # `request_path: auto` is left out: the pods' env decides the path (alpaca_serving.paths);
        # so is the default request router: the entry of a model rendered before these fields
        # existed stays the same (no Serve redeploy on an operator upgrade)
        "args": config.model_dump(
            mode="json", exclude_none=True, exclude=_defaults_left_out(config)
        ),
    }


LEFT_OUT_AT_DEFAULT = ("request_path", "request_router")
"""Fields added after the first release: at their default they stay out of the entry."""


def _defaults_left_out(config: ServingConfig) -> set[str]:
    fields = ServingConfig.model_fields
    return {f for f in LEFT_OUT_AT_DEFAULT if getattr(config, f) == fields[f].default}
