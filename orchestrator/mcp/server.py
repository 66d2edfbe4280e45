"""Cortex as an MCP server: a streamable HTTP endpoint at /mcp for any MCP client.

Authenticated with the same API tokens as /orchestrate (`Authorization: Bearer <token>`; 401
without one). Its tools hand work to Cortex and read it back: `submit_job` creates a job through
the one submission service, exactly as `POST /orchestrate` does, so Cortex's policy governs what
the job then does. No tool approves or denies a call: those decisions stay with the person, on
the page `get_job` links to.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field

from .. import selectors, services
from ..job_json import job_payload
from ..models import JobOrigin, JobStatus

logger = logging.getLogger(__name__)

PATH = "/mcp"
USER_KEY = "cortex.user_id"

cortex = MCPServer(
    "Cortex",
    instructions="Hand tasks to Cortex, an orchestrator of LLM agent jobs, and follow them. Risky tool calls "
                 "of a job wait for a person to approve them on Cortex's own pages.",
)


def _user(ctx: Context):
    request = ctx.request_context.request
    user_id = request.scope.get(USER_KEY) if request is not None else None
    if user_id is None:  # the endpoint lets no request through without a user; this is a second lock
        raise ToolError("not authenticated")
    return get_user_model().objects.get(pk=user_id)


def _site(ctx: Context) -> str:
    """The address the client reached Cortex at (https when a TLS proxy in front says so)."""
    request = ctx.request_context.request
    if request is None:
        return ""
    scheme = request.url.scheme
    if settings.SECURE_PROXY_SSL_HEADER:
        name, value = settings.SECURE_PROXY_SSL_HEADER
        if request.headers.get(name.removeprefix("HTTP_").replace("_", "-")) == value:
            scheme = "https"
    return f"{scheme}://{request.url.netloc}"


def _job(job: Any, site: str) -> dict[str, Any]:
    """A job as the API shows it, with the page where a person decides on its waiting calls."""
    payload = json.loads(json.dumps(job_payload(job), default=str))
    payload["url"] = site + reverse("job-detail", args=[job.pk])
    if payload.get("pending_confirmation"):
        payload["pending_confirmation"]["approve_at"] = payload["url"]
        payload["pending_confirmation"]["note"] = ("A person decides on these calls on that page (or through "
                                                   "the API); this endpoint cannot approve or deny them.")
    return payload


def _service(fn, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except services.ServiceError as error:
        raise ToolError(error.message) from None


@cortex.tool(description="Submit a task to Cortex as a new job (the same options as POST /orchestrate). "
                         "Returns the job's id; follow it with get_job.",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                         open_world_hint=True))
async def submit_job(
    task: Annotated[str, Field(description="What to do, in plain words.")],
    ctx: Context,
    session_id: Annotated[str | None, Field(description="Continue this session's conversation.")] = None,
    tier: Annotated[int | None, Field(ge=1, le=3, description="Context tier (1-3).")] = None,
    respond_with_final: Annotated[bool, Field(description="Have the chat-role model write the final answer.")] = True,
    include_long: bool = True,
    include_mid: bool = True,
    include_short: bool = True,
    persona: str | None = None,
    chat_role: str = "chat",
    off_record: bool = False,
    callback_url: Annotated[str | None, Field(description="POST the job's JSON here, signed, when it ends.")] = None,
    callback_on_confirmation: Annotated[bool, Field(description="Also when it starts waiting for a person.")] = False,
) -> dict[str, Any]:
    def submit() -> dict[str, Any]:
        job = _service(services.job_submit, user=_user(ctx), task=task, session_id=session_id, persona=persona,
                       options=services.JobOptions(tier=tier, respond_with_final=respond_with_final,
                                                   include_long=include_long, include_mid=include_mid,
                                                   include_short=include_short, chat_role=chat_role,
                                                   off_record=off_record),
                       origin=JobOrigin.MCP, callback_url=callback_url,
                       callback_on_confirmation=callback_on_confirmation)
        return {"job_id": str(job.id), "status": job.status}

    return await sync_to_async(submit)()


@cortex.tool(description="A job's status, its answer when it has one, and any tool calls waiting for a person "
                         "(with the address of the page where they decide).",
             annotations=ToolAnnotations(read_only_hint=True))
async def get_job(job_id: Annotated[str, Field(description="The id submit_job returned.")],
                  ctx: Context) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        try:
            job = selectors.job_for_user(_user(ctx), job_id)
        except Exception as error:  # Http404 for someone else's job or no job: the same answer
            raise ToolError(f"no job {job_id!r}") from error
        return _job(job, _site(ctx))

    return await sync_to_async(read)()


@cortex.tool(description="Your jobs, newest first.", annotations=ToolAnnotations(read_only_hint=True))
async def list_jobs(ctx: Context, limit: Annotated[int, Field(ge=1, le=100)] = 20,
                    status: Annotated[str | None, Field(description="Only jobs in this status.")] = None,
                    ) -> dict[str, Any]:
    if status is not None and status not in JobStatus.values:
        raise ToolError(f"status must be one of {', '.join(JobStatus.values)}")

    def read() -> dict[str, Any]:
        jobs = selectors.jobs_for_user(_user(ctx), status=status).prefetch_related("tool_calls")[:limit]
        return {"jobs": [_job(job, _site(ctx)) for job in jobs]}

    return await sync_to_async(read)()


class McpEndpoint:
    """The ASGI app at /mcp: the token first, then the SDK's streamable HTTP app.

    Daphne speaks no ASGI lifespan, so the SDK's session manager is started by the first request
    on the event loop that serves it. Stateless: any process can answer any request."""

    def __init__(self) -> None:
        self._app = cortex.streamable_http_app(
            streamable_http_path=PATH, stateless_http=True, json_response=True,
            # The bearer token is the protection: a page another site serves cannot send it.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._running: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        user = await self._authenticate(scope)
        if user is None:
            await _unauthorized(send)
            return
        if not await self._start():
            await _respond(send, 503, {"detail": "the MCP endpoint could not start; the server's log says why"})
            return
        await self._app(dict(scope, **{USER_KEY: user.pk}), receive, send)

    @staticmethod
    async def _authenticate(scope: dict) -> Any:
        authorization = next((value.decode("latin-1") for key, value in scope.get("headers", ())
                              if key.lower() == b"authorization"), "")
        if not authorization.lower().startswith("bearer "):
            return None
        return await database_sync_to_async(services.token_authenticate)(raw=authorization[7:].strip())

    async def _start(self) -> bool:
        """The SDK's session manager runs (started by the first request); False if it cannot."""
        if self._running is None:
            self._running = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="mcp endpoint sessions")
        await self._running.wait()
        return not self._runner.done()

    async def _run(self) -> None:
        try:
            async with cortex.session_manager.run():
                self._running.set()
                await asyncio.Event().wait()  # for as long as the process serves
        except Exception:
            logger.exception("the MCP endpoint's session manager stopped")
        finally:
            self._running.set()


async def _respond(send: Any, status: int, payload: dict[str, Any], headers: tuple = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send: Any) -> None:
    await _respond(send, 401, {"detail": "a valid API token is required"}, ((b"www-authenticate", b"Bearer"),))


class WithMcp:
    """Routes /mcp to the MCP endpoint and everything else to `inner` (Django)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.endpoint: McpEndpoint | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == PATH or path.startswith(PATH + "/")):
            if self.endpoint is None:
                self.endpoint = McpEndpoint()
            await self.endpoint(scope, receive, send)
            return
        await self.inner(scope, receive, send)
