"""LoRA adapters from local folders, through Ray Serve LLM's own injection points.

Ray Serve LLM serves adapters as multiplexed models named `<base>:<adapter>`, but only loads
them from object storage (its LoraConfig accepts s3://, gs://, azure:// prefixes). Our
adapters are folders: on the weights cache volume, or a fine-tune's output volume. Two thin
classes, plugged in where Ray takes them (the LLMServer's model downloader,
`ingress_cls_config`), read the adapters from the folders the config names:

- `LocalAdapterLoader`: resolves `<base>:<name>` to its folder (no download; vLLM loads it
  from there on first use, as it would after a download); every model's LLMServer
  (`server.AlpacaLLMServer`) loads adapters with it;
- `AlpacaIngress`: Ray's OpenAI ingress whose model list and model lookup include the
  configured adapters (Ray's would list an object-storage prefix).

Everything else — routing, multiplexing (at most N adapters per replica, least recently used
evicted), vLLM's LoRA loading — is Ray's and vLLM's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.common.utils.lora_utils import get_base_model_id, get_lora_id
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ModelCard,
    ModelList,
    OpenAIHTTPException,
)
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

ADAPTERS_KEY = "alpaca_adapters"
"""Where an LLMConfig carries its adapters ({name: folder}), in `experimental_configs`."""


def adapters_of(llm_config: Any) -> dict[str, str]:
    return dict((llm_config.experimental_configs or {}).get(ADAPTERS_KEY) or {})


class LocalAdapterLoader(LoraModelLoader):
    """Resolves `<base>:<name>` to the adapter's local folder; nothing is downloaded."""

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        if lora_model_id in self.disk_cache:
            return self.disk_cache[lora_model_id]
        name = get_lora_id(lora_model_id)
        folder = adapters_of(llm_config).get(name)
        if folder is None or not (Path(folder) / "adapter_config.json").is_file():
            raise OpenAIHTTPException(
                status_code=404,
                message=f'The model "{lora_model_id}" does not exist: no adapter named "{name}" '
                f"(adapters: {', '.join(sorted(adapters_of(llm_config))) or 'none'}).",
                type="InvalidModel",
            )
        config = DiskMultiplexConfig.model_validate(
            {
                "model_id": lora_model_id,
                "max_total_tokens": None,
                "local_path": str(folder),
                "lora_assigned_int_id": global_id_manager.next(),
            }
        )
        self.disk_cache[lora_model_id] = config
        return config


class AlpacaIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress; the model list includes the configured adapters."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, ModelCard],
        *,
        lora_paths: dict[str, str] | None = None,
        adapters: dict[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self._adapters = {base: list(names) for base, names in (adapters or {}).items()}

    async def _get_model_id(self, model: str | None) -> str:
        """Ray's check of the base model, and of the adapter: an unknown one is a 404 that
        names the adapters there are (before any replica is asked)."""
        model_id = await super()._get_model_id(model)
        base = get_base_model_id(model_id)
        if model_id != base and get_lora_id(model_id) not in self._adapters.get(base, []):
            known = ", ".join(f"{base}:{n}" for n in self._adapters.get(base, [])) or "none"
            raise OpenAIHTTPException(
                status_code=404,
                message=f'The model "{model_id}" does not exist: no adapter named '
                f'"{get_lora_id(model_id)}" (adapters: {known}).',
                type="InvalidModel",
            )
        return model_id

    async def model(self, model_id: str) -> ModelCard | None:
        if model_id in self._model_cards:
            return self._model_cards[model_id]
        base = get_base_model_id(model_id)
        if base in self._model_cards and get_lora_id(model_id) in self._adapters.get(base, []):
            card = self._model_cards[base]
            return ModelCard(
                id=model_id,
                object="model",
                owned_by=card.owned_by,
                permission=list(card.permission),
                metadata={**card.metadata, "base_model_id": base},
            )
        return None

    async def models(self) -> ModelList:
        cards = []
        for base in self._model_cards:
            cards.append(self._model_cards[base])
            for name in self._adapters.get(base, []):
                card = await self.model(f"{base}:{name}")
                if card is not None:
                    cards.append(card)
        return ModelList(data=cards)
