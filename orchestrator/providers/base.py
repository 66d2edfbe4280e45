"""One interface for every model backend.

The transcript a provider receives is provider-neutral JSON, the same that is stored on the job:

    {"role": "user", "content": "text"}
    {"role": "assistant", "content": "text or empty",
     "tool_calls": [{"id": "call_1", "name": "calculator", "arguments": "{\"expression\": \"1+1\"}",
                     "extra": {...}}],
     "extra": {...}}
    {"role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "text", "is_error": false}

`arguments` is kept as the raw string the model produced (it may not even be JSON); `extra` holds
whatever a provider hands back opaquely and requires again unchanged (a Gemini thought signature,
Claude's signed thinking blocks). A provider must replay `extra` it recognises and ignore the rest.

Every answer says why the model stopped, in one vocabulary for all providers (`Finish`), with the
provider's own word kept beside it for messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

Message = dict[str, Any]
DeltaCallback = Callable[[str], Awaitable[None]]

# A connection check should answer while the person waits on the page, not after a model's timeout.
CHECK_TIMEOUT = 15.0


@dataclass
class ModelRequest:
    model: str
    system: str
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name","description","parameters"}
    temperature: float | None = None
    timeout: float = 60.0
    max_tokens: int | None = None
    # "tool_loop" for the orchestrator's turns, "final" when the chat-role model writes the answer.
    purpose: str = "tool_loop"


class Finish:
    """Why a model stopped writing, whatever the provider calls it."""

    STOP = "stop"  # the answer is whole
    TOOL_CALLS = "tool_calls"  # it stopped to have tools run
    LENGTH = "length"  # cut off at the output limit: the answer is incomplete
    BLOCKED = "blocked"  # withheld or cut short by the provider's filters, or refused
    OTHER = "other"  # anything else (an unexpected or malformed tool call, an unknown reason)


@dataclass
class ModelToolCall:
    id: str
    name: str
    arguments: str  # raw, as the model wrote it
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ModelResponse:
    text: str
    tool_calls: list[ModelToolCall] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = ""  # a `Finish` value ("" when the provider did not say)
    raw_finish_reason: str = ""  # the provider's own word, for messages
    # The output limit in tokens the request ran under; None when the server's own applied.
    output_limit: int | None = None

    @property
    def incomplete(self) -> bool:
        """Cut off or withheld: not an answer to act on."""
        return self.finish_reason in (Finish.LENGTH, Finish.BLOCKED)

    def as_message(self) -> Message:
        message: Message = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments, **({"extra": c.extra} if c.extra else {})}
                for c in self.tool_calls
            ]
        if self.extra:
            message["extra"] = self.extra
        return message


C = TypeVar("C")


class LoopClients(Generic[C]):
    """SDK clients, one set per running event loop: pooled connections belong to the loop that
    opened them, and a client used from another loop fails (a test's loop, or `async_to_sync`).

    With `shards` above one, calls take the loop's clients in turn, each with a connection pool of
    its own, made as the turn first reaches it. A pool looks through every one of its connections
    each time a request starts or ends: with 250 calls in flight to one endpoint, that bookkeeping
    was an eighth of the executor's time in the benchmark, and eight pools cut it eightfold."""

    def __init__(self, factory: Callable[[], C], *, shards: int = 1) -> None:
        self._factory = factory
        self._shards = max(1, shards)
        # Each loop's clients, and the count of calls that took one, whose remainder picks the next.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[list[C], itertools.count]] = \
            weakref.WeakKeyDictionary()

    def get(self) -> C:
        loop = asyncio.get_running_loop()
        found = self._loops.get(loop)
        if found is None:
            found = self._loops[loop] = ([], itertools.count())
        clients, calls = found
        index = next(calls) % self._shards
        if index == len(clients):
            clients.append(self._factory())
        return clients[index]


class ProviderError(Exception):
    """A model call that failed; `retryable` errors are retried with backoff by the engine.

    `usage` is what the provider reported before the failure (a stream cut half way is billed)."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 status: int | None = None, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.usage = usage


def arguments_text(value: Any) -> str:
    """A tool call's arguments as text: some OpenAI-compatible servers send an object, not a string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def replayable_arguments(raw: str | None) -> str:
    """Arguments fit to send back in a past tool call: a JSON object, whatever the model wrote.

    vLLM, Ollama and llama-server parse past arguments and refuse the whole request when they are
    not a JSON object, which would end the job for a mistake the model was already told about. What
    the model wrote stays in the stored transcript; the replay wraps it in an object instead."""
    text = (raw or "").strip()
    if not text:
        return "{}"
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return raw or "{}"
    return json.dumps({"unparsed_arguments": raw})


class Provider(Protocol):
    name: str  # "openai", "demo", ...

    def label(self, model: str) -> str:
        """A human label for answers and pages, e.g. "OpenAI-compatible · llama3.1"."""
        ...

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None) -> ModelResponse:
        """One model turn. With `on_delta`, stream text as it arrives (where the backend can)."""
        ...

    async def check(self, model: str, *, timeout: float = CHECK_TIMEOUT) -> str:
        """A cheap authenticated call (listing the models) that says in plain words that the endpoint
        and key work, and whether `model` is on offer; raises ProviderError saying what failed."""
        ...


def check_report(where: str, model: str, listed: Collection[str] | None) -> str:
    """What a connection check found. `listed` is None when the endpoint's list was cut short, so
    a model missing from it proves nothing."""
    if listed is None:
        return f"Connected to {where}."
    if model in listed:
        return f"Connected to {where}; {model} is available."
    return (f"Connected to {where}, but {model} is not among the {len(listed)} models it lists: "
            "check the model name.")
