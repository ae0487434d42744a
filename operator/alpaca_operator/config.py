"""Operator-wide settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from alpaca_operator import __version__

REGISTRY = "ghcr.io/alpaca-dev"
RAY_VERSION = "2.60.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Images and versions the renderers use when a spec does not override them."""

    serving_image: str = f"{REGISTRY}/alpaca-serving:{__version__}"
    weights_image: str = f"{REGISTRY}/alpaca-weights:{__version__}"
    training_image: str = f"{REGISTRY}/alpaca-training:{__version__}"
    ray_version: str = RAY_VERSION

    @classmethod
    def from_env(cls) -> OperatorConfig:
        defaults = cls()
        return cls(
            serving_image=os.environ.get("ALPACA_SERVING_IMAGE", defaults.serving_image),
            weights_image=os.environ.get("ALPACA_WEIGHTS_IMAGE", defaults.weights_image),
            training_image=os.environ.get("ALPACA_TRAINING_IMAGE", defaults.training_image),
            ray_version=os.environ.get("ALPACA_RAY_VERSION", defaults.ray_version),
        )
