"""Where a model's weights come from, how they are recovered, and the volume that caches them."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from alpaca_operator.api.base import ApiModel, DnsLabel, Quantity, cel, defaulted

SOURCE_PATTERN = r"^((hf|s3|gs|http|https|pvc)://[^\p{Z}\p{Cc}]+|/[^\p{Z}\p{Cc}]*)$"
"""No whitespace or control character anywhere: `\\s` would not do, it is ASCII whitespace to the
apiserver (Go's RE2) but any Unicode whitespace to the operator (pydantic's Rust regex), which
then refused `hf://org/\\u0085model` that the apiserver stored."""
SOURCE_HELP = (
    "hf://ORG/NAME (Hugging Face Hub, or the endpoint in HF_ENDPOINT), s3://BUCKET/PREFIX, "
    "gs://BUCKET/PREFIX, http(s)://HOST/PATH/ (a folder served over HTTP), "
    "pvc://CLAIM/PATH (a PersistentVolumeClaim in the same namespace), or an absolute path "
    "on the node"
)

SOURCE_CREDENTIALS = (
    "a source must not carry credentials in its URL (user:password@host): put them in the "
    "Secret that credentialsSecret names; a URL's credentials would be copied into statuses, "
    "Events and annotations"
)
_USERINFO = r"^[a-z0-9]+://[^/]*@"


def _no_credentials(source: str) -> str:
    if re.match(_USERINFO, source):
        raise ValueError(SOURCE_CREDENTIALS)
    return source


Source = Annotated[
    str,
    Field(
        pattern=SOURCE_PATTERN,
        max_length=2048,
        json_schema_extra={
            "x-kubernetes-validations": [cel(f"!self.matches('{_USERINFO}')", SOURCE_CREDENTIALS)]
        },
    ),
    AfterValidator(_no_credentials),
]
"""Where something is fetched from (see SOURCE_HELP); credentials never inside the URL."""


class Volume(ApiModel):
    """A volume the operator creates: size, storage class and access mode."""

    size: Quantity = Field(
        default="50Gi",
        description="Requested capacity (for example 50Gi). A 7B model in bf16 needs about 14Gi; "
        "leave room for a weight-diff recovery, which writes the recovered model beside the diff.",
    )
    storage_class_name: str | None = Field(
        default=None,
        description="StorageClass of the volume; the cluster's default class when unset.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = Field(
        default="ReadWriteMany",
        description="ReadWriteMany lets replicas on many nodes share one copy (needs a storage class "
        "that supports it, such as NFS, EFS, Filestore or CephFS); with ReadWriteOnce every user "
        "of the volume must run on one node.",
    )


class Recover(ApiModel):
    """Stanford Alpaca's weight-diff recovery: the source holds a diff against a LLaMA base."""

    base: Source = Field(
        description=f"The original LLaMA weights the diff was made against, in Hugging Face format: {SOURCE_HELP}.",
    )
    base_revision: str | None = Field(
        default=None, description="Revision of the base (a branch, tag or commit for hf://)."
    )
    expected_checksum: float | None = Field(
        default=None,
        description="The integrity check of the recovered model: the sum of the sums of all its "
        "tensors, compared with an absolute tolerance of 1e-2. 50637.1836 for Alpaca-7B.",
    )


class Weights(ApiModel):
    """The weights of a model, fetched once into a cache volume shared by every user of them."""

    source: Source = Field(
        description=f"Where the weights are, in Hugging Face format (config.json, tokenizer, "
        f"*.safetensors or *.bin): {SOURCE_HELP}.",
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="A branch, tag or commit for hf://; an object version label for other "
        "sources. Part of the cache identity: a new revision fills a new cache.",
    )
    credentials_secret: DnsLabel | None = Field(
        default=None,
        description="Name of a Secret in the same namespace whose keys become the fill Job's "
        "environment: HF_TOKEN for hf://; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_ENDPOINT_URL for s3://; GOOGLE_APPLICATION_CREDENTIALS_JSON for gs://; "
        "HTTP_AUTHORIZATION for http(s)://.",
    )
    recover: Recover | None = Field(
        default=None,
        description="Set when the source is a weight diff (as Stanford released Alpaca-7B): the "
        "model is recovered as diff + base, tensor by tensor.",
    )
    convert_to_safetensors: bool = Field(
        default=True,
        description="Convert PyTorch .bin checkpoints to safetensors in the cache (faster, safer "
        "loading).",
    )
    cache: Volume = defaulted(
        Volume,
        "The cache volume. One cache exists per weights identity (source, revision, "
        "recover base) and is shared by every AlpacaModel and AlpacaFineTune that names it.",
    )
