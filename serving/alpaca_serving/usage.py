"""Ray's usage stats: off in every Ray process the operator or the local command starts.

Ray reports usage stats (cluster size, libraries used, Ray Serve LLM's models) to
usage-stats.ray.io from the head's dashboard every hour unless `RAY_USAGE_STATS_ENABLED` is
"0". A platform running models for its users does not send what it runs to a third party by
default, and on the heads the collection costs memory: Ray Serve LLM keeps its share in an
actor of its own (`server.AlpacaLLMServer` makes it only where the stats are on). The rendered
Ray pods carry `OFF`; the local command sets it unless its environment says otherwise. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

USAGE_STATS: Final = "RAY_USAGE_STATS_ENABLED"
"""Ray's switch: "0" is off; "1", or unset, is on (Ray's default)."""

OFF: Final[Mapping[str, str]] = {USAGE_STATS: "0"}


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether Ray collects usage stats in a process with this environment (Ray's own rule:
    only an explicit "0" turns them off)."""
    return environ.get(USAGE_STATS) != "0"
