"""AlpacaFineTune: the Stanford Alpaca supervised fine-tuning recipe as a resource."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from alpaca_operator.api.base import (
    ApiModel,
    Condition,
    DnsLabel,
    Quantity,
    Rule,
    defaulted,
    immutable,
)
from alpaca_operator.api.capacity import Capacity, Resources
from alpaca_operator.api.model import Autoscaling, Engine, Head
from alpaca_operator.api.weights import SOURCE_HELP, Source, Volume, Weights

KIND = "AlpacaFineTune"
PLURAL = "alpacafinetunes"

FULL_LEARNING_RATE = 2e-5
"""Stanford Alpaca's learning rate for full fine-tuning of LLaMA-7B."""
LORA_LEARNING_RATE = 3e-4
"""alpaca-lora's learning rate."""
MAX_BATCH = 2**24
"""The largest batch size, global or per device (Stanford Alpaca's is 128)."""


def _immutable(what: str) -> dict[str, list[dict[str, str]]]:
    return immutable(what, "make a new AlpacaFineTune")


class Dataset(ApiModel):
    """The instruction data."""

    source: Source = Field(
        description=f"A JSON or JSONL file (or a folder of them): {SOURCE_HELP}.",
    )
    format: Literal["alpaca"] = Field(
        default="alpaca",
        description="alpaca: records with instruction, input (may be empty) and output.",
    )
    credentials_secret: DnsLabel | None = Field(
        default=None, description="A Secret with credentials for the source, as for weights."
    )


class Hyperparameters(ApiModel):
    """The training recipe; the defaults are Stanford Alpaca's for LLaMA-7B."""

    # Bounded so that the apiserver's rule (globalBatchSize modulo perDeviceBatchSize x nodes x
    # GPUs, in int64) cannot overflow: an overflow refused the spec without naming a field.
    global_batch_size: int = Field(
        default=128,
        ge=1,
        le=MAX_BATCH,
        description="Examples per optimizer step: perDeviceBatchSize x gradient accumulation x "
        "number of GPUs (the operator derives the accumulation).",
    )
    per_device_batch_size: int = Field(
        default=4, ge=1, le=MAX_BATCH, description="Examples per GPU per forward pass."
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=f"Peak learning rate; {FULL_LEARNING_RATE:g} for method full and "
        f"{LORA_LEARNING_RATE:g} for method lora when unset.",
    )
    epochs: float = Field(default=3, gt=0, le=100, description="Passes over the dataset.")
    max_length: int = Field(
        default=512, ge=16, le=131072, description="Longest example in tokens; longer ones are cut."
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        default=0.03, ge=0, le=1, description="Fraction of steps with a linear warm-up."
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warm-up."
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Training precision (bf16 needs Ampere or newer GPUs)."
    )
    seed: int = Field(
        default=42, ge=0, description="Random seed for data order and initialisation."
    )

    def effective_learning_rate(self, method: str) -> float:
        """The learning rate in effect for a method."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if method == "lora" else FULL_LEARNING_RATE


class Lora(ApiModel):
    """LoRA settings; the defaults are alpaca-lora's."""

    r: int = Field(default=8, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(
        default=16, ge=1, description="Scaling numerator (the update is scaled by alpha/r)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the modules that get adapters.",
    )


class TrainingResources(Resources):
    """What each training node gets."""

    nodes: int = Field(
        default=1, ge=1, le=512, description="Pods (one per node), joined by torchrun."
    )
    cpu: Quantity = Field(default="16", description="CPU request and limit per pod.")
    memory: Quantity = Field(default="128Gi", description="Memory request and limit per pod.")


class Output(ApiModel):
    """Where checkpoints and the final model go."""

    volume: Volume = defaulted(
        Volume,
        "The output volume (ReadWriteMany when nodes > 1, so all ranks share it).",
        size="100Gi",
    )
    save_steps: int = Field(
        default=200, ge=1, description="Save a checkpoint every this many steps."
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, le=100, description="Newest checkpoints kept; older ones are deleted."
    )


class Serve(ApiModel):
    """An AlpacaModel the operator creates or updates from the result when training succeeds."""

    name: DnsLabel = Field(description="Name of the AlpacaModel (in the same namespace).")
    resources: Resources | None = Field(
        default=None, description="Resources per replica; one GPU when unset."
    )
    capacity: Capacity | None = Field(
        default=None, description="Where replicas run; the fine-tune's capacity when unset."
    )
    engine: Engine | None = Field(default=None, description="vLLM engine settings.")
    autoscaling: Autoscaling | None = Field(default=None, description="Replica autoscaling.")
    head: Head | None = Field(
        default=None,
        description="The Ray head pod's resources; the AlpacaModel's defaults when unset.",
    )


class AlpacaFineTuneSpec(ApiModel):
    """The desired state of an AlpacaFineTune."""

    RULES = (
        Rule(
            "!has(self.lora) || self.method == 'lora'",
            "lora settings are only allowed with method: lora",
            ".lora",
            lambda s: s.lora is None or s.method == "lora",
        ),
        Rule(
            "self.hyperparameters.globalBatchSize % (self.hyperparameters.perDeviceBatchSize"
            " * self.resources.nodes * (self.resources.gpus > 0 ? self.resources.gpus : 1))"
            " == 0",
            "hyperparameters.globalBatchSize must be a multiple of perDeviceBatchSize x "
            "resources.nodes x resources.gpus",
            ".hyperparameters.globalBatchSize",
            lambda s: s.hyperparameters.global_batch_size % s.batch_per_step() == 0,
        ),
    )

    base_model: Weights = Field(
        description="The model to fine-tune (LLaMA-class, Hugging Face format), from the shared "
        "weights cache.",
        json_schema_extra=_immutable("baseModel"),
    )
    dataset: Dataset = Field(
        description="The instruction data.", json_schema_extra=_immutable("dataset")
    )
    method: Literal["full", "lora"] = Field(
        default="full",
        json_schema_extra=_immutable("method"),
        description="full: all weights, FSDP full_shard across GPUs (Stanford Alpaca). lora: "
        "low-rank adapters only (alpaca-lora); the output is an adapter.",
    )
    hyperparameters: Hyperparameters = defaulted(
        Hyperparameters,
        "The recipe; Stanford Alpaca's 7B values by default.",
        frozen=_immutable("hyperparameters"),
    )
    lora: Lora | None = Field(
        default=None,
        description="LoRA settings, with method lora.",
        json_schema_extra=_immutable("lora"),
    )
    resources: TrainingResources = defaulted(
        TrainingResources,
        "Nodes, and GPUs, CPU and memory per node.",
        frozen=_immutable("resources"),
    )
    capacity: Capacity = defaulted(
        Capacity,
        "Where training pods run and how GPU nodes are obtained.",
        frozen=_immutable("capacity"),
    )
    output: Output = defaulted(
        Output, "Checkpoints and the final model.", frozen=_immutable("output")
    )
    serve: Serve | None = Field(
        default=None, description="Serve the result as an AlpacaModel when training succeeds."
    )
    suspend: bool = Field(
        default=False,
        description="true stops the training pods (they resume from the last checkpoint when set "
        "back to false). Kueue sets it while the workload waits in its queue.",
    )
    queue_name: DnsLabel | None = Field(
        default=None,
        description="Kueue LocalQueue; passed to the Job as kueue.x-k8s.io/queue-name.",
    )
    image: str | None = Field(
        default=None, description="Training image override.", json_schema_extra=_immutable("image")
    )

    def batch_per_step(self) -> int:
        """Examples one forward pass takes across all ranks (a GPU-less node counts as one)."""
        per_node = self.resources.gpus if self.resources.gpus > 0 else 1
        return self.hyperparameters.per_device_batch_size * self.resources.nodes * per_node


FineTunePhase = Literal["Pending", "Suspended", "Running", "Succeeded", "Failed"]


class Progress(ApiModel):
    """Training progress, reported by rank 0."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps in the run.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(
        default=None, description="Training loss, smoothed over the last steps."
    )
    learning_rate: float | None = Field(default=None, ge=0, description="Current learning rate.")
    eta: str | None = Field(default=None, description="Estimated time left, for example 1h12m.")
    summary: str | None = Field(
        default=None, description="step/totalSteps and percent, for kubectl get."
    )
    updated_at: datetime | None = Field(
        default=None, strict=False, description="When this was reported."
    )


class AlpacaFineTuneStatus(ApiModel):
    """The observed state of an AlpacaFineTune, written by the operator."""

    phase: FineTunePhase | None = Field(
        default=None,
        description="Pending (waiting for capacity, weights or data), Suspended, Running, "
        "Succeeded or Failed. The conditions say why.",
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Accepted, CapacityReady, WeightsReady, DatasetReady, Training, Succeeded, Served.",
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    output: str | None = Field(
        default=None, description="Where the final model is (pvc://CLAIM/PATH)."
    )
