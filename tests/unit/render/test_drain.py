"""The replaced RayCluster drains for the model's `upgrade.drainTime` after KubeRay moves the
traffic (KubeRay's rayClusterDeletionDelaySeconds); a change of it is no new cluster."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import capacity, rayservice


def _rendered(**upgrade: str) -> dict[str, Any]:
    spec = AlpacaModelSpec.model_validate(
        {"weights": {"source": "hf://org/model"}, "upgrade": upgrade}
    )
    place = capacity.placement(spec.capacity, spec.resources, "team", "m")
    app = application_for(spec, "/models/x", "m")
    return rayservice.rayservice(spec, "m", "team", app, "img", "2.60.0", place)


@pytest.mark.parametrize(("drain", "seconds"), [(None, 60), ("10s", 10), ("1h30m", 5400)])
def test_the_deletion_delay_is_the_drain_time(drain, seconds):
    rs = _rendered(**({"drainTime": drain} if drain else {}))
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] == seconds


def test_the_drain_time_is_outside_the_cluster_config():
    """KubeRay starts a new cluster when rayClusterConfig changes; the drain time is not in it."""
    short, long = _rendered(drainTime="10s"), _rendered(drainTime="10m")
    assert short["spec"]["rayClusterConfig"] == long["spec"]["rayClusterConfig"]
    assert short["spec"]["serveConfigV2"] == long["spec"]["serveConfigV2"]
