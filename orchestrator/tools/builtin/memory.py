"""Memory tools: what the assistant keeps about its user, by tier (long, mid, short term)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db.models import Q

from ...tools.registry import ToolContext, ToolError, tool

TIERS = ["long", "mid", "short"]


@tool(
    name="memory_search",
    category="memory",
    description="Search the user's saved memories by words they contain. Returns the best matches with ids.",
    risk="low",
    idempotent=True,
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 200},
            "tier": {"type": "string", "enum": TIERS},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
async def memory_search(ctx: ToolContext, query: str, tier: str | None = None, limit: int = 10) -> Any:
    return await sync_to_async(_search)(ctx.user_id, query, tier, limit)


def _search(user_id: int, query: str, tier: str | None, limit: int) -> list[dict[str, Any]]:
    from ...models import Memory

    words = [word for word in query.split() if word][:10]
    matches = Memory.objects.filter(user_id=user_id)
    if tier:
        matches = matches.filter(tier=tier)
    condition = Q()
    for word in words:
        condition |= Q(content__icontains=word)
    return [{"id": m.pk, "tier": m.tier, "content": m.content, "updated_at": m.updated_at.isoformat()}
            for m in matches.filter(condition).order_by("-updated_at")[:limit]]


@tool(
    name="memory_save",
    category="memory",
    description="Save a fact about the user to remember later. Tier: long (lasting facts), mid (current "
                "projects, the default) or short (this week).",
    risk="low",
    idempotent=False,
    parameters={
        "type": "object",
        "properties": {
            "content": {"type": "string", "minLength": 1, "maxLength": 10000},
            "tier": {"type": "string", "enum": TIERS},
        },
        "required": ["content"],
        "additionalProperties": False,
    },
)
async def memory_save(ctx: ToolContext, content: str, tier: str = "mid") -> Any:
    return await sync_to_async(_save)(ctx, content, tier)


def _save(ctx: ToolContext, content: str, tier: str) -> dict[str, Any]:
    from ... import services

    if ctx.off_record:
        raise ToolError("this conversation is off the record: nothing from it may be saved to memory")
    user = get_user_model().objects.get(pk=ctx.user_id)
    try:
        memory = services.memory_save(user=user, content=content, tier=tier, source_job_id=ctx.job_id)
    except services.ServiceError as error:
        raise ToolError(error.message) from None
    return {"saved": True, "id": memory.pk, "tier": memory.tier}


@tool(
    name="memory_delete",
    category="memory",
    description="Delete one of the user's saved memories by its id (find ids with memory_search).",
    risk="medium",
    idempotent=True,
    parameters={
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 1}},
        "required": ["id"],
        "additionalProperties": False,
    },
)
async def memory_delete(ctx: ToolContext, id: int) -> Any:
    return await sync_to_async(_delete)(ctx.user_id, id)


def _delete(user_id: int, memory_id: int) -> dict[str, Any]:
    from ... import services
    from django.http import Http404

    user = get_user_model().objects.get(pk=user_id)
    try:
        services.memory_delete(user=user, memory_id=memory_id)
    except Http404:
        raise ToolError(f"there is no memory with id {memory_id}") from None
    return {"deleted": True, "id": memory_id}


@tool(
    name="conversation_search",
    category="memory",
    description="Search the user's past conversations (their earlier tasks and the answers) for words. "
                "Off-the-record conversations are never found.",
    risk="low",
    idempotent=True,
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 200},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
async def conversation_search(ctx: ToolContext, query: str, limit: int = 10) -> Any:
    return await sync_to_async(_conversation_search)(ctx.user_id, query, limit)


def _conversation_search(user_id: int, query: str, limit: int) -> list[dict[str, Any]]:
    from ...models import Message

    condition = Q()
    for word in query.split()[:10]:
        condition |= Q(content__icontains=word)
    found = (Message.objects.filter(condition, session__user_id=user_id, off_record=False)
             .order_by("-created_at")[:limit])
    return [{"session_id": str(m.session_id), "role": m.role, "content": m.content[:2000],
             "at": m.created_at.isoformat()} for m in found]
