"""The one typed configuration of an Alpaca serving application.

The operator renders it into a KubeRay serveConfigV2 entry (`serve_config.application_entry`);
`app.build_app` turns it into a Ray Serve LLM application; the local command reads it from a
file or flags. Nothing here imports Ray or vLLM.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _absolute_path(value: str, field: str) -> str:
    """The builder and the replicas run on different nodes: a relative path would resolve
    against a different folder on each."""
    if not value.startswith("/"):
        raise ValueError(f"{field} must be an absolute path (got {value!r})")
    return value


class Adapter(BaseModel):
    """A LoRA adapter served beside the base model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Adapter name; clients ask for `<model>:<name>` (Ray Serve LLM's naming)."
    )
    path: str = Field(
        description="Absolute path of the folder with adapter_config.json and the weights, "
        "as every replica's node sees it (a shared cache volume)."
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_path(value, "adapters[].path")


class Autoscaling(BaseModel):
    """Ray Serve autoscaling of the model's replicas."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (0: scale to zero).")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=16, ge=1, description="Requests in flight per replica to aim for."
    )
    downscale_delay_s: float = Field(
        default=600.0, ge=0, description="Wait before removing a replica."
    )
    upscale_delay_s: float = Field(default=10.0, ge=0, description="Wait before adding a replica.")
    downscale_to_zero_delay_s: float | None = Field(
        default=None, ge=0, description="Wait before removing the last replica."
    )
    metrics_interval_s: float | None = Field(
        default=None, gt=0, description="How often replicas report load; Ray's default when unset."
    )
    look_back_period_s: float | None = Field(
        default=None,
        gt=0,
        description="Window the load is averaged over; Ray's default when unset.",
    )


class ServingConfig(BaseModel):
    """Everything the Alpaca serving application needs."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(
        description="Absolute path of the folder with the model in Hugging Face format, as "
        "every replica's node sees it (a shared cache volume)."
    )
    served_model_name: str = Field(description="The model name in the OpenAI API.")
    prompt_template: Literal["alpaca", "none"] | str = Field(
        default="alpaca",
        description="alpaca: Stanford Alpaca's templates; none: the model's own chat template; "
        "anything else: a Jinja chat template.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments."
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Replica autoscaling."
    )
    adapters: list[Adapter] = Field(default_factory=list, description="LoRA adapters.")
    max_adapters_per_replica: int = Field(
        default=16, ge=1, description="LoRA adapters one replica holds at once."
    )
    accelerator: Literal["gpu", "cpu"] = Field(default="gpu", description="Where the engine runs.")
    gpus_per_replica: int = Field(
        default=1, ge=0, description="GPUs one replica uses (tensor parallel)."
    )
    cpus_per_replica: float = Field(
        default=2.0, gt=0, description="CPUs one replica's bundle reserves (cpu accelerator)."
    )
    request_path: Literal["auto", "fast", "standard"] = Field(
        default="auto",
        description="auto: Ray Serve's fast path (HAProxy, the LLMServer as ingress) unless "
        "there are adapters; fast: that path (no adapters); standard: Serve's Python proxy "
        "and an OpenAI ingress deployment (alpaca_serving.paths).",
    )
    request_router: Literal["least_connections", "prefix_affinity", "ray"] = Field(
        default="least_connections",
        description="Which replica takes a request. least_connections: on the fast path HAProxy "
        "picks the replica with the fewest open requests itself, with no Python hop (on the "
        "standard path Serve's handle picks the less busy of two at random, the same idea); "
        "prefix_affinity: Ray Serve LLM's PrefixCacheAffinityRouter, the replica that served "
        "the longest shared prompt prefix while load is balanced (on the fast path HAProxy "
        "asks Ray's LLMRouter for each request, its body forwarded); ray: Ray Serve's own "
        "choice (on the fast path HAProxy asks Ray's LLMRouter, round robin; on the standard "
        "path as least_connections). benchmarks/serving_overhead.py and prefix_routing.py "
        "measure them (decision 40).",
    )

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_path(value, "model_path")

    @model_validator(mode="after")
    def _fast_path_serves_no_adapters(self) -> ServingConfig:
        if self.request_path == "fast" and self.adapters:
            raise ValueError(
                "request_path: fast cannot serve LoRA adapters (adapters): Serve's HAProxy "
                "ingress ignores the multiplexed model id adapters are routed on, and the "
                "adapters' ingress is a deployment the fast path has none of; use auto or "
                "standard"
            )
        return self
