"""kopf handlers: thin wrappers that guard, delegate to the reconcile functions and apply results.

kopf keeps its own bookkeeping in annotations under alpaca.dev (not in status), and no handler
here needs a finalizer: children are garbage-collected through owner references.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from alpaca_operator.accept import Outcome, accept
from alpaca_operator.api import GROUP, VERSION, finetune, model

MODEL_PENDING = (
    "The spec is accepted. This operator version does not yet reconcile capacity, weights and "
    "serving for AlpacaModel."
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Operator-wide settings: where kopf keeps its state, how it posts Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # kopf's own INFO logs are not posted as Events
    settings.watching.server_timeout = 300


def _apply(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    patch.status.update(outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


@kopf.on.resume(GROUP, VERSION, model.PLURAL)
@kopf.on.create(GROUP, VERSION, model.PLURAL)
@kopf.on.update(GROUP, VERSION, model.PLURAL, field="spec")
def reconcile_model(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """AlpacaModel created, changed, or found at start-up."""
    outcome = accept(
        dict(spec),
        model.AlpacaModelSpec,
        meta.get("generation"),
        dict(status),
        "Pending",
        pending_message=MODEL_PENDING,
    )
    _apply(outcome, body, patch)


@kopf.on.resume(GROUP, VERSION, finetune.PLURAL)
@kopf.on.create(GROUP, VERSION, finetune.PLURAL)
@kopf.on.update(GROUP, VERSION, finetune.PLURAL, field="spec")
def reconcile_finetune(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """AlpacaFineTune created, changed, or found at start-up."""
    phase = "Suspended" if spec.get("suspend") else "Pending"
    outcome = accept(
        dict(spec), finetune.AlpacaFineTuneSpec, meta.get("generation"), dict(status), phase
    )
    _apply(outcome, body, patch)


@kopf.on.delete(GROUP, VERSION, model.PLURAL, optional=True)
@kopf.on.delete(GROUP, VERSION, finetune.PLURAL, optional=True)
def deleted(name: str, namespace: str, logger: kopf.Logger, **_: Any) -> None:
    """Log a deletion. optional=True: no finalizer, children go by owner references."""
    logger.info(
        "deleted %s/%s; children are garbage-collected by owner references", namespace, name
    )
