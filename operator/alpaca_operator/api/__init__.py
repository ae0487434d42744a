"""The alpaca.dev/v1alpha1 API: Pydantic models, the single source of truth for the CRDs."""

from alpaca_operator.api.base import API_VERSION, GROUP, VERSION, Condition
from alpaca_operator.api.finetune import AlpacaFineTuneSpec, AlpacaFineTuneStatus
from alpaca_operator.api.model import AlpacaModelSpec, AlpacaModelStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AlpacaFineTuneSpec",
    "AlpacaFineTuneStatus",
    "AlpacaModelSpec",
    "AlpacaModelStatus",
    "Condition",
]
