"""AlpacaModel: an instruction-tuned LLM served over an OpenAI-compatible API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from alpaca_operator.api.base import (
    QUANTITY_PATTERN,
    ApiModel,
    Condition,
    DnsLabel,
    Duration,
    Quantity,
    Rule,
    defaulted,
    parse_duration,
    quantity_value,
    rule_error,
)
from alpaca_operator.api.capacity import Capacity, Resources
from alpaca_operator.api.weights import SOURCE_HELP, Source, Volume, Weights

KIND = "AlpacaModel"
PLURAL = "alpacamodels"


class Prompt(ApiModel):
    """How chat messages become the prompt the model was trained on."""

    RULES = (
        Rule(
            "self.template != 'custom' || has(self.custom)",
            "prompt.custom is required with template: custom",
            ".custom",
            lambda p: p.template != "custom" or p.custom is not None,
        ),
        Rule(
            "!has(self.custom) || self.template == 'custom'",
            "prompt.custom is only allowed with template: custom",
            ".custom",
            lambda p: p.custom is None or p.template == "custom",
        ),
    )

    template: Literal["alpaca", "none", "custom"] = Field(
        default="alpaca",
        description="alpaca: Stanford Alpaca's instruction templates (with and without input) "
        "become the chat template. none: keep the model's own chat template. custom: the Jinja "
        "chat template in prompt.custom.",
    )
    custom: str | None = Field(
        default=None,
        min_length=1,
        max_length=65536,
        description="A Jinja chat template (Hugging Face chat_template syntax), with template: custom.",
    )


class Engine(ApiModel):
    """vLLM engine settings."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights and activations dtype; auto follows the model config."
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Longest context (prompt + completion) in tokens; the model's own when unset. "
        "Lower it to fit the KV cache on smaller GPUs.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Fraction of each GPU's memory vLLM may use for weights, activations and KV cache.",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=16,
        description="GPUs one replica's model is split across; at most resources.gpus.",
    )
    quantization: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="vLLM quantization method (awq, gptq, fp8, bitsandbytes, ...); none when unset.",
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Further vLLM engine arguments, passed as they are (keys in vLLM's "
        "snake_case, for example enable_prefix_caching: true).",
    )


class Autoscaling(ApiModel):
    """Ray Serve autoscaling of replicas from ongoing requests; GPU nodes follow the replicas."""

    RULES = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must be less than or equal to maxReplicas",
            ".minReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
    )

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0 scales to zero when idle and releases the GPUs; the first "
        "request after that waits for a node and the model to load.",
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=16,
        ge=1,
        description="Requests in flight per replica that the autoscaler aims for.",
    )
    scale_to_zero_delay: Duration = Field(
        default="15m",
        description="With minReplicas 0: how long without requests before the last replica goes.",
    )


ADAPTER_CACHE_SIZE = "2Gi"
"""The cache volume of one adapter (LoRA adapters of 7B models are megabytes)."""


class Adapter(ApiModel):
    """A LoRA adapter served beside the base model under its own model name."""

    name: DnsLabel = Field(
        description="The adapter's name: clients ask for the model `<servedModelName>:<name>`."
    )
    source: Source = Field(
        description=f"Where the adapter (adapter_config.json + weights) is: {SOURCE_HELP}. "
        "Fetched once into its own shared cache, with the weights' credentialsSecret.",
    )

    def as_weights(self, model: Weights) -> Weights:
        """The adapter as weights, cached, verified and shared like a model's: with the model's
        credentials, storage class and access mode, in a small volume."""
        cache = Volume(
            size=ADAPTER_CACHE_SIZE,
            storage_class_name=model.cache.storage_class_name,
            access_mode=model.cache.access_mode,
        )
        return Weights(source=self.source, credentials_secret=model.credentials_secret, cache=cache)


HEAD_MIN_MEMORY = "3Gi"
HEAD_MEMORY_HELP = (
    f"head.memory must be at least {HEAD_MIN_MEMORY}: the head holds Serve's controller, proxy "
    "and OpenAI ingress and Ray's own processes (about 2 GB), and Ray's memory monitor kills "
    "the Serve controller above 95% of it"
)


class Head(ApiModel):
    """The Ray head pod. It runs no engine: the GCS, the dashboard (KubeRay deploys the Serve
    config through it), Serve's controller and HTTP proxy, the OpenAI ingress replica (it
    imports vLLM's API types, ~0.6 GB), Ray Serve LLM's telemetry actor, and the autoscaler
    sidecar (100m CPU, 256Mi-512Mi of memory, beside these): about 2 GB in use. Ray's memory
    monitor kills processes above 95% of the pod's memory, the Serve controller first, so the
    head gets at least 3Gi. The defaults suit a production endpoint; a small CPU-only node
    needs less CPU."""

    RULES = (
        Rule(
            # quantity() only on what the schema's pattern allows: the rule runs even when the
            # pattern refused the value, and ParseQuantity computes for minutes on `1e-99999999999`
            f"!string(self.memory).matches(r'{QUANTITY_PATTERN}') || "
            f"quantity(string(self.memory)).compareTo(quantity('{HEAD_MIN_MEMORY}')) >= 0",
            HEAD_MEMORY_HELP,
            ".memory",
            lambda h: quantity_value(h.memory) >= quantity_value(HEAD_MIN_MEMORY),
        ),
    )

    cpu: Quantity = Field(
        default="1",
        description="CPU request of the head container; no limit, so the HTTP proxy may use "
        "idle CPU under load.",
    )
    memory: Quantity = Field(
        default="4Gi",
        description=f"Memory request and limit of the head container; at least {HEAD_MIN_MEMORY}.",
    )


class Images(ApiModel):
    """Container images, when the defaults of this operator release are not wanted."""

    serving: str | None = Field(
        default=None, description="Ray + vLLM image for the RayService head and workers."
    )
    weights: str | None = Field(
        default=None, description="Image of the Job that fills the weights cache."
    )


class Upgrade(ApiModel):
    """How a change that needs new pods (image, GPUs, CPU, memory, placement, weights or
    adapters) reaches a model that is serving. Changes to the engine options, adapters' names,
    autoscaling or these settings are applied in place and need no upgrade."""

    RULES = (
        Rule(
            "duration(self.drainTime) >= duration('10s') && "
            "duration(self.drainTime) <= duration('24h')",
            "drainTime must be between 10s and 24h",
            ".drainTime",
            lambda u: 10 <= parse_duration(u.drain_time) <= 24 * 3600,
        ),
    )

    strategy: Literal["Auto", "ZeroDowntime", "Recreate"] = Field(
        default="Auto",
        description="Auto: start the new RayCluster beside the running one when the free GPUs "
        "(on the nodes the model may use, or in its Karpenter NodePool's limit) hold it, move "
        "traffic once its Serve app is healthy, then remove the old one; when there is no room "
        "within capacityTimeout, delete the running cluster first (an outage until the new one "
        "serves). ZeroDowntime: always start the new cluster beside the running one and wait "
        "for room as long as it takes. Recreate: delete the running cluster first (an outage, "
        "never more GPUs than one cluster).",
    )
    capacity_timeout: Duration = Field(
        default="10m",
        description="With strategy Auto: how long to wait for room for the new cluster (free "
        "GPUs, or its workers scheduled) before recreating instead.",
    )
    drain_time: str = Field(
        default="60s",
        # a Duration whose every form CEL's duration() converts: at most 5 digits a unit (a
        # longer one, 2562048h, overflows it, and the rule would blame spec.upgrade instead)
        pattern=r"^([0-9]{1,5}(\.[0-9]{1,9})?(ms|s|m|h)){1,4}$",
        description="How long the replaced RayCluster keeps running once traffic has moved to "
        "the new one, so that the requests it is still answering (long generations, streams) "
        "can finish; KubeRay deletes it then. Between 10s and 24h: the endpoint Service's "
        "switch must reach every node's kube-proxy before the old pods go.",
    )


class AlpacaModelSpec(ApiModel):
    """The desired state of an AlpacaModel."""

    RULES = (
        Rule(
            "self.resources.gpus == 0 || self.engine.tensorParallelSize <= self.resources.gpus",
            "engine.tensorParallelSize must not exceed resources.gpus",
            ".engine.tensorParallelSize",
            lambda s: s.resources.gpus == 0 or s.engine.tensor_parallel_size <= s.resources.gpus,
        ),
    )

    weights: Weights = Field(description="The model's weights and their cache.")
    served_model_name: DnsLabel | None = Field(
        default=None,
        description="The model name in the OpenAI API; the AlpacaModel's name when unset.",
    )
    prompt: Prompt = defaulted(
        Prompt,
        "Prompt format for chat requests.",
    )
    resources: Resources = defaulted(
        Resources,
        "GPUs, CPU and memory of one replica.",
    )
    head: Head = defaulted(
        Head,
        "The Ray head pod's resources (it runs no model replica).",
    )
    capacity: Capacity = defaulted(
        Capacity,
        "Where replicas run and how GPU nodes are obtained.",
    )
    engine: Engine = defaulted(
        Engine,
        "vLLM engine settings.",
    )
    autoscaling: Autoscaling = defaulted(
        Autoscaling,
        "Replica autoscaling, down to zero if asked.",
    )
    adapters: list[Adapter] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="LoRA adapters served with the model, each under its own name.",
    )
    images: Images = defaulted(
        Images,
        "Image overrides.",
    )
    upgrade: Upgrade = defaulted(
        Upgrade,
        "How changes that need new pods reach a serving model: zero downtime when capacity allows.",
    )

    @field_validator("adapters")
    @classmethod
    def _names_unique(cls, adapters: list[Adapter]) -> list[Adapter]:
        """A list-type map: the apiserver refuses a second adapter of the same name."""
        seen: set[str] = set()
        for i, adapter in enumerate(adapters):
            if adapter.name in seen:
                raise rule_error(f"Duplicate value: adapter name {adapter.name!r}", f"[{i}]")
            seen.add(adapter.name)
        return adapters


ModelPhase = Literal[
    "Pending", "Provisioning", "Downloading", "Deploying", "Ready", "Degraded", "Failed"
]


class AlpacaModelStatus(ApiModel):
    """The observed state of an AlpacaModel, written by the operator."""

    phase: ModelPhase | None = Field(
        default=None,
        description="The stage the model is in: Pending, Provisioning (GPU capacity), Downloading "
        "(weights), Deploying (serving), Ready, Degraded (was ready, now partly not) or Failed "
        "(needs a change to go on). The conditions say why.",
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Accepted, CapacityReady, WeightsReady, ServingReady, Ready and Upgrading.",
    )
    endpoint: str | None = Field(
        default=None, description="Base URL of the OpenAI-compatible API (append /v1/...)."
    )
    replicas: int | None = Field(default=None, ge=0, description="Serving replicas wanted now.")
    ready_replicas: int | None = Field(
        default=None, ge=0, description="Serving replicas that answer requests."
    )
    ready: str | None = Field(default=None, description="readyReplicas/replicas, for kubectl get.")
