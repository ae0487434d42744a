"""The platform administrator's policy on what a spec may make the cluster run. Pure.

A user who may create AlpacaModels should not thereby run any code they like on the GPU
nodes: image overrides must come from allowed prefixes (`allowedImagePrefixes`; the default
images' repositories always are), and vLLM arguments that run code from outside the image are
refused unless the administrator allows them (`allowRemoteCode`). A spec that breaks the policy
is not accepted (the Accepted condition names each field and what would be allowed); nothing
is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from alpaca_operator.api.finetune import AlpacaFineTuneSpec
from alpaca_operator.api.model import AlpacaModelSpec, Engine
from alpaca_operator.config import OperatorConfig
from alpaca_operator.validation import Invalid

ANY_IMAGE = "*"  # an allowed prefix that allows every image (a single-tenant cluster)
SHOWN = 120  # characters of a spec's value quoted in a message
BOUNDARIES = ("/", ":", "@")  # what follows a name in a reference: a path, a tag, a digest

# vLLM (0.32) engine arguments that run code the image does not hold or the operator did not
# choose, found by reading its EngineArgs: each imports Python code by name or from a file
# (a file on the weights cache came from wherever the weights came from). Checked at any depth
# of engine.extraArgs (kv_transfer_config.kv_connector_module_path, ...), keys in vLLM's
# snake_case or with dashes.
REMOTE_CODE_ARGS: dict[str, str] = {
    "trust_remote_code": "runs the Python files of the model's repository",
    "model_class_overrides": "imports a model class by name",
    "worker_cls": "imports the engine's worker class by name",
    "worker_extension_cls": "imports a class into every engine worker",
    "scheduler_cls": "imports the engine's scheduler class by name",
    "distributed_executor_backend": "imports an executor class by name",
    "logits_processors": "imports logits processor classes by name",
    "reasoning_parser_plugin": "imports a Python file",
    "tool_parser_plugin": "imports a Python file",
    "io_processor_plugin": "loads an IO processor plugin",
    "kv_connector_module_path": "imports a KV connector module",
    "ec_connector_module_path": "imports an encoder cache connector module",
    "encoder_cache_manager_cls": "imports an encoder cache manager class by name",
    "inductor_passes": "imports compiler passes by name",
    "log_config_file": "configures logging from a file (a logging config may call any function)",
}
# Values of those arguments that run nothing but vLLM's own code.
HARMLESS: dict[str, frozenset[Any]] = {
    "worker_cls": frozenset({"auto"}),
    "distributed_executor_backend": frozenset({"ray", "mp", "uni", "external_launcher"}),
}
# compilation_config.backend: a torch.compile backend name, or a class vLLM imports by name.
COMPILE_BACKENDS = frozenset({"inductor", "eager"})


def _shown(value: str) -> str:
    return value if len(value) <= SHOWN else value[: SHOWN - 3] + "..."


def _under(image: str, prefix: str) -> bool:
    if not prefix or not image.startswith(prefix):
        return False
    rest = image[len(prefix) :]
    return not rest or prefix.endswith(BOUNDARIES) or rest.startswith(BOUNDARIES)


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """Whether an image reference starts with an allowed prefix at a boundary of its name:
    `ghcr.io/team` allows `ghcr.io/team/ray:1` but not `ghcr.io/team-evil/ray:1`; a repository
    allows its tags and digests."""
    return any(p == ANY_IMAGE or _under(image, p) for p in prefixes)


def check_image(field: str, image: str | None, config: OperatorConfig) -> list[Invalid]:
    """An image override outside the allowed prefixes, named by its field."""
    if image is None or image_allowed(image, config.image_prefixes):
        return []
    allowed = ", ".join(config.image_prefixes)
    return [
        Invalid(
            field,
            f"image {_shown(image)!r} is not under an allowed prefix ({allowed}): remove the "
            "override, use an image under one of them, or ask the operator's administrator to "
            "add its prefix to allowedImagePrefixes",
        )
    ]


def _parsed(value: Any) -> Any:
    """A map written as JSON text (vLLM's command line would parse it) as the map."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path, key in snake_case, value) of every key at any depth of nested maps, lists and
    maps written as JSON text; depth first, without recursion (a spec can nest deeper than
    Python's stack)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        here, node = stack.pop()
        node = _parsed(node)
        if isinstance(node, dict):
            items = [(f"{here}.{key}", key, item) for key, item in node.items()]
            for at, key, item in items:
                yield at, str(key).replace("-", "_"), item
            stack.extend((at, item) for at, _, item in reversed(items))
        elif isinstance(node, list):
            stack.extend((f"{here}[{i}]", item) for i, item in reversed(list(enumerate(node))))


def _runs_code(path: str, key: str, value: Any) -> str | None:
    """What an engine argument runs, if it runs code from outside the image."""
    if value is None or value is False or value in ("", [], {}):
        return None
    if key in REMOTE_CODE_ARGS:
        harmless = HARMLESS.get(key, frozenset())
        return None if isinstance(value, str) and value in harmless else REMOTE_CODE_ARGS[key]
    compiler = key == "backend" and path.rsplit(".", 2)[-2].endswith("compilation_config")
    if compiler and not (isinstance(value, str) and value in COMPILE_BACKENDS):
        return "imports a compiler backend by name"
    return None


def check_engine(field: str, engine: Engine | None, config: OperatorConfig) -> list[Invalid]:
    """Engine arguments that run code from outside the image, unless allowRemoteCode."""
    if engine is None or config.allow_remote_code:
        return []
    problems = []
    for path, key, value in _walk(engine.extra_args, field):
        what = _runs_code(path, key, value)
        if what is not None:
            problems.append(
                Invalid(
                    path,
                    f"{what}: remove it, or ask the operator's administrator to set "
                    "allowRemoteCode",
                )
            )
    return problems


def model_problems(spec: AlpacaModelSpec, config: OperatorConfig) -> list[Invalid]:
    """What of an AlpacaModel's spec the policy does not allow."""
    return [
        *check_image("spec.images.serving", spec.images.serving, config),
        *check_image("spec.images.weights", spec.images.weights, config),
        *check_engine("spec.engine.extraArgs", spec.engine, config),
    ]


def finetune_problems(
    spec: AlpacaFineTuneSpec, config: OperatorConfig, trained: bool = False
) -> list[Invalid]:
    """What of an AlpacaFineTune's spec the policy does not allow. Its training image is not
    judged again once the run has succeeded (`trained`): it runs no more, and the field is
    immutable, so a tighter policy would only turn a finished run's status to Failed."""
    images = [] if trained else check_image("spec.image", spec.image, config)
    engine = spec.serve.engine if spec.serve is not None else None
    return [*images, *check_engine("spec.serve.engine.extraArgs", engine, config)]
