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
        # `request_path: auto` is left out: the pods' env decides the path (alpaca_serving.paths),
        # and the entry of a model rendered before the field existed stays the same
        "args": config.model_dump(
            mode="json",
            exclude_none=True,
            exclude={"request_path"} if config.request_path == "auto" else None,
        ),
    }
