"""Every kind of child is watched into the store, has an API path in the client's table, and is
granted by the chart's rules (a kind missing from one of them fails only on a real cluster, at
its first pass)."""

from __future__ import annotations

from alpaca_operator import handlers, rbac
from alpaca_operator.kube import KINDS

NOT_APPLIED = {"RayCluster"}  # KubeRay creates it from the RayService; the operator patches it


def test_every_child_kind_is_watched_addressable_and_granted():
    granted = {
        (group, resource, verb)
        for rule in rbac.RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for (group, _, plural), (api_version, kind) in handlers.CHILDREN.items():
        assert (api_version, kind) in handlers.STORED
        assert KINDS[(api_version, kind)].plural == plural
        verbs = ("list", "watch") + (() if kind in NOT_APPLIED else ("create", "patch"))
        for verb in verbs:
            assert (group, plural, verb) in granted, (kind, verb)
