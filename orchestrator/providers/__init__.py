"""Model backends behind one interface (see base.py), resolved from `provider:model` strings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

from .base import ModelRequest, ModelResponse, ModelToolCall, Provider, ProviderError, Usage

__all__ = ["ModelRequest", "ModelResponse", "ModelToolCall", "Provider", "ProviderError", "Usage",
           "ProviderUnknown", "label", "parse_model", "resolve", "PROVIDERS"]

PROVIDERS = ("demo", "openai", "gemini", "anthropic")


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
        provider, model = resolve(value)
    except ProviderUnknown:
        return value
    return provider.label(model)


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
