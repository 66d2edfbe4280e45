"""The floor: the same conversation as a Cortex job, held by a bare asyncio loop over the `openai`
SDK that persists nothing. Whatever Cortex costs beyond this is the price of durability.

    python -m bench.floor --base-url URL --conversation FILE --jobs 200 --at-once 1 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai

from .common import BenchFailure, Conversation, Outcome, cpu_seconds, peak_rss_mb

WARMUP_JOBS = 3


async def current_time(*, timezone: str = "UTC") -> dict[str, Any]:
    """The same work as Cortex's built-in `current_time` for the zone the fake asks about (UTC),
    without importing the app (and Django) into the floor's process."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"timezone": "UTC", "iso": now.isoformat(), "weekday": now.strftime("%A"),
            "utc_offset": "+00:00", "unix": int(now.timestamp())}


HANDLERS: dict[str, Callable[..., Awaitable[Any]]] = {"current_time": current_time}


async def run_job(client: openai.AsyncOpenAI, conversation: Conversation, tools: list[dict[str, Any]]) -> int:
    """One job: model turn, tool calls, results appended, until the model answers in text.
    Returns the number of tool rounds it took."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": conversation.system},
                                      {"role": "user", "content": conversation.task}]
    rounds = 0
    while True:
        completion = await client.chat.completions.create(model=conversation.model, messages=messages, tools=tools)
        message = completion.choices[0].message
        if not message.tool_calls:
            if not message.content:
                raise BenchFailure("floor: the model returned an empty answer")
            return rounds
        rounds += 1
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [{"id": call.id, "type": "function",
                                         "function": {"name": call.function.name,
                                                      "arguments": call.function.arguments}}
                                        for call in message.tool_calls]})
        for call in message.tool_calls:
            args = json.loads(call.function.arguments or "{}")
            result = await HANDLERS[call.function.name](**args)
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": json.dumps(result, ensure_ascii=False, default=str)})


async def run_jobs(client: openai.AsyncOpenAI, conversation: Conversation, *, jobs: int, at_once: int) -> list[int]:
    tools = [{"type": "function", "function": spec} for spec in conversation.tools]
    if at_once <= 1:  # strictly one after another, like the serial Cortex run
        return [await run_job(client, conversation, tools) for _ in range(jobs)]
    gate = asyncio.Semaphore(at_once)

    async def gated() -> int:
        async with gate:
            return await run_job(client, conversation, tools)

    return list(await asyncio.gather(*(gated() for _ in range(jobs))))


async def main(args: argparse.Namespace) -> Outcome:
    conversation = Conversation.load(args.conversation)
    # One shared client, as Cortex shares one per endpoint; no SDK retries, as in Cortex.
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key="bench", max_retries=0)
    async with client:
        await run_jobs(client, conversation, jobs=WARMUP_JOBS, at_once=1)  # connections, lazy imports
        started, cpu_started = time.perf_counter(), cpu_seconds()
        rounds = await run_jobs(client, conversation, jobs=args.jobs, at_once=args.at_once)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    wrong = [r for r in rounds if r != args.rounds]
    if len(rounds) != args.jobs or wrong:
        raise BenchFailure(f"floor: {len(wrong)} of {len(rounds)} jobs did not take {args.rounds} rounds")
    return Outcome(side="floor", jobs=args.jobs, rounds=args.rounds, at_once=args.at_once, seconds=seconds,
                   cpu_seconds=cpu, peak_rss_mb=peak_rss_mb())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--conversation", type=Path, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--at-once", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse())).emit()
