"""Passes over different objects run in parallel (the work queue's workers); what they share —
a namespace's weights cache — must not lose a write to that parallelism."""

from __future__ import annotations

import threading
import time
from typing import Any

from alpaca_operator.handlers import STORED
from alpaca_operator.reconcile.apply import Applier
from alpaca_operator.reconcile.model import ModelContext, run_model
from alpaca_operator.reconcile.serving import application_for
from alpaca_operator.render import names
from alpaca_operator.store import CachedKube, Store

from .fake_kube import FakeKube
from .support import ALL_CRDS, API, CONFIG, NOW, NS, create, example


class SlowWrites(FakeKube):
    """The apiserver's answer to a cache write takes a while: time for another pass to read
    the cache in between."""

    def apply(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        if obj["kind"] == "PersistentVolumeClaim":
            time.sleep(0.2)
        return super().apply(obj, subresource)


def test_two_users_of_one_cache_passing_at_once_both_own_it():
    api = SlowWrites(ALL_CRDS)
    store = Store(STORED)
    kube = CachedKube(api, store)
    ctx = ModelContext(kube, Applier(kube), CONFIG, application_for)
    bodies = []
    for name in ("a", "b", "c"):  # the same weights: one cache
        store.put(create(api, example("alpaca-local.yaml"), name))
        bodies.append(store.get(API, "AlpacaModel", name, NS))
    for obj in api.list("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        store.put(obj)
    errors: list[BaseException] = []

    def run(body: dict[str, Any]) -> None:
        try:
            run_model(ctx, body, NOW)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    pvcs = [
        p
        for p in api.list("v1", "PersistentVolumeClaim", NS)
        if names.LABEL_CACHE in (p["metadata"].get("labels") or {})
    ]
    assert len(pvcs) == 1
    owners = {ref["uid"] for ref in pvcs[0]["metadata"]["ownerReferences"]}
    assert owners == {b["metadata"]["uid"] for b in bodies}
    job = api.stored("batch/v1", "Job", names.fill_job_name(pvcs[0]["metadata"]["name"]), NS)
    assert {ref["uid"] for ref in job["metadata"]["ownerReferences"]} == owners
