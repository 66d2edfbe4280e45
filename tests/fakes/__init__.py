"""Fake LLM provider servers that speak each provider's real HTTP protocol."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved lazily: importing the provider modules here would make
# `python -m tests.fakes.openai_fake` load that module twice.
_EXPORTS = {
    "AnthropicFake": "anthropic_fake",
    "ErrorReply": "http",
    "GeminiFake": "gemini_fake",
    "OpenAIFake": "openai_fake",
    "ToolCall": "http",
    "Turn": "http",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
