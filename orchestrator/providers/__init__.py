"""Model backends behind one interface (see base.py), resolved from `provider:model` strings."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module

from django.conf import settings

from .base import ModelRequest, ModelResponse, ModelToolCall, Provider, ProviderError, Usage

__all__ = ["ModelRequest", "ModelResponse", "ModelToolCall", "Provider", "ProviderError", "Usage",
           "ProviderUnknown", "label", "load", "loaded", "parse_model", "resolve", "PROVIDERS"]

PROVIDERS = ("demo", "openai", "gemini", "anthropic")
# Each provider's module, which imports its SDK: tens of MiB and seconds each, so a process imports
# only those it uses (see `load`).
MODULES = {"demo": ".demo", "openai": ".openai_compat", "gemini": ".gemini", "anthropic": ".anthropic"}
# How answers and pages name a model, without importing its provider's SDK.
LABELS = {"demo": "Demo model (offline, scripted)", "openai": "OpenAI-compatible · {model}",
          "gemini": "Gemini · {model}", "anthropic": "Claude · {model}"}

_loaded: set[str] = set()  # providers whose module has finished importing
_loading = threading.Lock()


class ProviderUnknown(ProviderError):
    """A model string naming no known provider."""


@dataclass(frozen=True)
class ModelChoice:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def parse_model(value: str) -> ModelChoice:
    provider, sep, model = (value or "").partition(":")
    if not sep or not provider or not model:
        raise ProviderUnknown(f"a model must look like provider:model, not {value!r}")
    if provider not in PROVIDERS:
        raise ProviderUnknown(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    return ModelChoice(provider, model)


def resolve(value: str, *, base_url: str | None = None, api_key: str | None = None,
            public_only: bool = False) -> tuple[Provider, str]:
    """The provider instance and model name for `provider:model`. Clients are shared per endpoint
    so connections are reused across jobs. `public_only`: the endpoint is one a person typed, so
    every connection to it is address-checked as it is opened (see netguard)."""
    choice = parse_model(value)
    if choice.provider == "openai":
        return (_openai(*_endpoint(base_url, api_key, settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY), public_only),
                choice.model)
    if choice.provider == "gemini":
        return (_gemini(*_endpoint(base_url, api_key, settings.CORTEX_GEMINI_BASE_URL, settings.GEMINI_API_KEY),
                        public_only), choice.model)
    if choice.provider == "anthropic":
        return (_anthropic(*_endpoint(base_url, api_key, settings.CORTEX_ANTHROPIC_BASE_URL,
                                      settings.ANTHROPIC_API_KEY), public_only), choice.model)
    return _demo(), choice.model


def label(value: str) -> str:
    """A human label for `provider:model`, the one answers are recorded with; the string itself
    when it names no known provider."""
    try:
        choice = parse_model(value)
    except ProviderUnknown:
        return value
    return LABELS[choice.provider].format(model=choice.model)


def load(value: str) -> None:
    """Import the module (and SDK) of `value`'s provider, `value` being `provider:model` or a
    provider's name. Blocks for as long as the import takes: call it at start-up, on a thread, or
    through `loaded` from a running event loop."""
    provider = value.partition(":")[0] if ":" in value else value
    if provider not in MODULES:
        raise ProviderUnknown(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    if provider in _loaded:
        return
    with _loading:
        import_module(MODULES[provider], __name__)
        _loaded.add(provider)


async def loaded(value: str) -> None:
    """`load`, from a running event loop without stalling it: the first job that needs an SDK
    the process has not imported yet imports it on a thread, while every other job (and every
    lease's heartbeat) carries on. A module counts as loaded only once its import has finished, so
    nothing on the loop ever waits on a half-imported module's lock."""
    choice = parse_model(value)
    if choice.provider not in _loaded:
        await asyncio.to_thread(load, choice.provider)


def _endpoint(base_url: str | None, api_key: str | None, env_base_url: str, env_key: str) -> tuple[str, str]:
    """(base URL, key) for a call. The environment's key goes only to the endpoint the environment
    configures (its base URL, or the provider's own when it names none), never to an address a
    person typed: there a profile's own key is sent, or none."""
    if base_url and base_url.rstrip("/") != env_base_url.rstrip("/"):
        return base_url, api_key or ""
    return env_base_url, api_key or env_key


@lru_cache(maxsize=1)
def _demo() -> Provider:
    from .demo import DemoProvider

    return DemoProvider()


@lru_cache(maxsize=32)
def _openai(base_url: str, api_key: str, public_only: bool) -> Provider:
    from .openai_compat import OpenAIProvider

    return OpenAIProvider(base_url=base_url, api_key=api_key, public_only=public_only)


@lru_cache(maxsize=32)
def _gemini(base_url: str, api_key: str, public_only: bool) -> Provider:
    from .gemini import GeminiProvider

    return GeminiProvider(base_url=base_url, api_key=api_key, public_only=public_only)


@lru_cache(maxsize=32)
def _anthropic(base_url: str, api_key: str, public_only: bool) -> Provider:
    from .anthropic import AnthropicProvider

    return AnthropicProvider(base_url=base_url, api_key=api_key, public_only=public_only)
