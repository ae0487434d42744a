"""Operator-wide settings: images from the environment, policy from the command line (the Helm
chart sets both)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from alpaca_operator import __version__

REGISTRY = "ghcr.io/alpaca-dev"
RAY_VERSION = "2.60.0"
# Where KubeRay's operator runs when installed as the README says; it queries every Ray head's
# dashboard (Serve applications), so the heads' NetworkPolicy lets this namespace in.
KUBERAY_NAMESPACE = "kuberay-system"


def image_repository(image: str) -> str:
    """An image reference without its digest and tag: `host:5000/team/ray:2.60@sha256:..` ->
    `host:5000/team/ray` (a colon before the last slash is a registry's port, not a tag)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class OperatorConfig:
    """Images and versions the renderers use when a spec does not override them, and the
    platform administrator's policy on what a spec may make the cluster run."""

    serving_image: str = f"{REGISTRY}/alpaca-serving:{__version__}"
    weights_image: str = f"{REGISTRY}/alpaca-weights:{__version__}"
    training_image: str = f"{REGISTRY}/alpaca-training:{__version__}"
    ray_version: str = RAY_VERSION
    allowed_image_prefixes: tuple[str, ...] = ()
    """Where image overrides (spec.images.*, an AlpacaFineTune's spec.image) may come from, in
    addition to the repositories of the three default images (always allowed)."""
    allow_remote_code: bool = False
    """Whether engine.extraArgs may carry vLLM arguments that run code from outside the image
    (trust_remote_code and its kind; policy.REMOTE_CODE_ARGS)."""
    dashboard_namespaces: tuple[str, ...] = (KUBERAY_NAMESPACE,)
    """Namespaces whose pods may reach each Ray head's dashboard and Jobs API (port 8265):
    KubeRay's, and the operator's own."""

    @property
    def image_prefixes(self) -> tuple[str, ...]:
        """Every prefix an image override may start with: the default images' repositories,
        then the administrator's, without repeats."""
        defaults = (self.serving_image, self.weights_image, self.training_image)
        found = [image_repository(i) for i in defaults] + list(self.allowed_image_prefixes)
        return tuple(dict.fromkeys(p for p in found if p))

    @classmethod
    def from_env(cls) -> OperatorConfig:
        defaults = cls()
        return cls(
            serving_image=os.environ.get("ALPACA_SERVING_IMAGE", defaults.serving_image),
            weights_image=os.environ.get("ALPACA_WEIGHTS_IMAGE", defaults.weights_image),
            training_image=os.environ.get("ALPACA_TRAINING_IMAGE", defaults.training_image),
            ray_version=os.environ.get("ALPACA_RAY_VERSION", defaults.ray_version),
        )
