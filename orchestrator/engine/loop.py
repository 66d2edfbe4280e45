"""Driving one job: step after step until it finishes, waits for a person, or is taken away.

Each step reads the persisted state, acts once (one model call or one tool run) and persists the
outcome, so a job can stop after any step and any executor can pick it up from there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connections

from .. import netguard, providers
from ..providers import ModelRequest, ModelResponse, Provider, ProviderError
from ..tools.registry import ToolContext, ToolError, registry, tool_result_text
from . import state

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    """Runs the engine's short synchronous transactions on dedicated threads.

    One thread suits SQLite (it has one writer anyway) and keeps its connection open between
    steps; a server database can take a few more. Each thread is its own pool so that, at shutdown,
    every thread can be asked to close its own connection.
    """

    def __init__(self, threads: int = 1) -> None:
        self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cortex-db-{n}") for n in range(threads)]
        self._next = itertools.cycle(self._pools)

    async def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(next(self._next), lambda: _call(fn, kwargs))

    def close(self) -> None:
        for pool in self._pools:
            pool.submit(connections.close_all).result()
            pool.shutdown(wait=True)


def _call(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return fn(**kwargs)
    except Exception:
        # A broken connection must not poison the thread's next step.
        close_old_connections()
        raise


async def drive(job_id: str, *, owner: str, db: Database, claimed: state.Claimed | None = None) -> None:
    """`claimed`: the job's claim, which may have taken its first step (`state.jobs_claim_and_step`)."""
    # Recording an outcome and deciding the next step share one transaction, which halves the
    # commits and the trips to the database thread per step.
    if claimed is not None and claimed.action is not None:
        memo, action = claimed.memo, claimed.action
    else:
        memo = state.Memo()
        action = await db.run(state.next_action, owner=owner, job_id=job_id, memo=memo)
    while not isinstance(action, state.Stop):
        if isinstance(action, state.RunTool):
            result, is_error = await run_tool(action, job_id)
            action = await db.run(state.finish_call_and_continue, owner=owner, job_id=job_id, memo=memo,
                                  call_pk=action.call_pk, result=result, is_error=is_error)
            continue
        try:
            response, backend, label = await call_model(action, job_id=job_id, owner=owner, db=db)
        except ProviderError as error:
            await db.run(state.job_fail, owner=owner, job_id=job_id, error=f"model call failed: {error.message}",
                         usage=error.usage or providers.Usage())
            return
        action = await db.run(state.record_turn_and_continue, owner=owner, job_id=job_id, action=action, memo=memo,
                              response=response, backend=backend, backend_label=label)


async def call_model(action: state.CallModel, *, job_id: str, owner: str,
                     db: Database) -> tuple[ModelResponse, str, str]:
    """One model turn, retried with backoff (honouring the provider's hint) on transient errors.

    The final answer streams: its pieces become `answer.delta` events as they arrive. Each failed
    attempt is counted in the job's usage with whatever tokens the provider reported for it."""
    await providers.loaded(action.model)
    provider, model = providers.resolve(action.model, base_url=action.base_url, api_key=action.api_key,
                                        public_only=action.public_only)
    timeout = action.timeout or settings.CORTEX_MODEL_TIMEOUT
    request = ModelRequest(model=model, system=action.system, messages=action.messages, tools=action.tools,
                           timeout=timeout, temperature=action.temperature, max_tokens=action.max_tokens,
                           purpose=action.purpose)
    deltas = DeltaBuffer(db, owner=owner, job_id=job_id) if action.purpose == "final" else None
    attempts = settings.CORTEX_MODEL_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            if action.public_only:
                await endpoint_allowed(action.base_url or "")
            response = await attempt_within(provider, request, deltas, timeout)
            if deltas:
                await deltas.flush()
            return response, action.model, provider.label(model)
        except TimeoutError:
            silent = "sent nothing more for" if deltas and deltas.started else "did not answer within"
            error = ProviderError(f"the model {silent} {timeout:g} s", retryable=True)
        except ProviderError as caught:
            error = caught
        except Exception:  # an answer the provider's SDK could not make sense of (absurd nesting, wrong shapes)
            logger.warning("job %s: the answer of %s could not be read", job_id, action.model, exc_info=True)
            error = ProviderError("the model's answer could not be read", retryable=True)
        if not error.retryable or attempt == attempts:
            if attempt > 1:
                error.message = f"{error.message} (after {attempt} attempts)"
            raise error
        wait = backoff(attempt, error.retry_after)
        await db.run(state.record_retry, owner=owner, job_id=job_id, attempt=attempt, wait=wait,
                     error=error.message, usage=error.usage or providers.Usage())
        if deltas:
            await deltas.reset()
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def endpoint_allowed(base_url: str) -> None:
    try:
        await netguard.check_endpoint(base_url)
    except netguard.HostUnknown as error:
        raise ProviderError(str(error), retryable=True) from None
    except netguard.Unreachable as error:
        raise ProviderError(f"the model endpoint {base_url} is not allowed: {error}") from None


async def attempt_within(provider: Provider, request: ModelRequest, deltas: DeltaBuffer | None,
                         timeout: float) -> ModelResponse:
    """One attempt, given up when the model goes quiet.

    The SDKs time out each read themselves; this is the engine's own guard, a little later, for a
    call that hangs anyway. A plain call has the whole time to answer; a stream has it between one
    piece and the next, however long the whole answer takes to write."""
    allowed = timeout + min(5.0, timeout)
    async with asyncio.timeout(allowed) as deadline:
        if deltas is None:
            return await provider.complete(request)
        loop = asyncio.get_running_loop()

        async def on_delta(text: str) -> None:
            deadline.reschedule(loop.time() + allowed)
            await deltas.add(text)

        return await provider.complete(request, on_delta=on_delta)


class DeltaBuffer:
    """Collects streamed text and writes it to the event log in batches, so a fast stream costs
    a few transactions a second rather than one per token."""

    INTERVAL = 0.1
    SIZE = 400

    def __init__(self, db: Database, *, owner: str, job_id: str) -> None:
        self.db, self.owner, self.job_id = db, owner, job_id
        self.pending: list[str] = []
        self.sent = False
        self.started = False  # some text of this attempt arrived
        self.last_flush = time.monotonic()

    async def add(self, text: str) -> None:
        if not text:
            return
        self.started = True
        self.pending.append(text)
        if time.monotonic() - self.last_flush >= self.INTERVAL or sum(map(len, self.pending)) >= self.SIZE:
            await self.flush()

    async def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        text, self.pending = "".join(self.pending), []
        await self.db.run(state.record_delta, owner=self.owner, job_id=self.job_id, text=text)
        self.sent = True

    async def reset(self) -> None:
        """Forget a failed attempt's text; tell the watchers to start over if any of it reached them."""
        sent, self.pending, self.sent, self.started = self.sent, [], False, False
        if sent:
            await self.db.run(state.record_delta, owner=self.owner, job_id=self.job_id, text="", reset=True)


def backoff(attempt: int, hint: float | None) -> float:
    if hint is not None:
        return min(hint, settings.CORTEX_RETRY_MAX_SECONDS)
    base = settings.CORTEX_RETRY_BASE_SECONDS * (2 ** (attempt - 1))
    return min(base * (0.5 + random.random() / 2), settings.CORTEX_RETRY_MAX_SECONDS)


async def run_tool(action: state.RunTool, job_id: str) -> tuple[str, bool]:
    tool = registry.get(action.name)
    if tool is None:  # the registry changed since the call was recorded
        return f"Error: there is no tool named {action.name!r}", True
    context = ToolContext(user_id=action.user_id, username=action.username, job_id=job_id,
                          workspace=workspace_for(action.user_id), settings=settings, off_record=action.off_record)
    try:
        async with asyncio.timeout(tool.timeout):
            value = await tool.handler(context, **action.args)
        return tool_result_text(value), False
    except TimeoutError:
        return f"Error: {tool.name} did not finish within {tool.timeout:g} s", True
    except ToolError as error:
        return f"Error: {error}", True
    except Exception as error:  # a broken tool must not take the executor down
        logger.exception("tool %s failed in job %s", tool.name, job_id)
        return f"Error: {tool.name} failed: {type(error).__name__}: {error}", True


def workspace_for(user_id: int) -> Path:
    return Path(settings.CORTEX_WORKSPACE_ROOT) / str(user_id)

