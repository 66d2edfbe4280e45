"""The JSON API under /orchestrate, compatible with the original router's paths and fields.

Authenticated by `Authorization: Bearer <token>`; errors are `{"detail": ...}`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Body, NinjaAPI, Query, Schema
from ninja.responses import Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from pydantic import AfterValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from . import selectors, services
from .engine import sanitise
from .job_json import job_payload
from .models import JobOrigin, JobStatus


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> AbstractBaseUser | None:
        user = services.token_authenticate(raw=token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="Cortex",
    version="1.0",
    description="Submit tasks to the orchestrator, follow them, and decide on the tool calls that "
                "wait for a person. Authenticate with `Authorization: Bearer <token>` "
                "(create one with `python manage.py create_api_token USERNAME` or under Settings → API tokens).",
    auth=BearerToken(),
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    urls_namespace="api",
    docs_decorator=login_required,
)


# --- Errors: always {"detail": ...} with the right status --------------------------------------

@api.exception_handler(services.ServiceError)
def service_error(request: HttpRequest, error: services.ServiceError) -> HttpResponse:
    return api.create_response(request, {"detail": error.message}, status=error.status)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, error: ValidationError) -> HttpResponse:
    return api.create_response(request, {"detail": _describe(error.errors)}, status=400)


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, error: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "request body too large"}, status=413)


@api.exception_handler(AuthenticationError)
def unauthorized(request: HttpRequest, error: AuthenticationError) -> HttpResponse:
    response = api.create_response(request, {"detail": "a valid API token is required"}, status=401)
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(Http404)
def not_found(request: HttpRequest, error: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(error) or "not found"}, status=404)


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "payload", "query"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "malformed request"


# --- Schemas -----------------------------------------------------------------------------------

# Offsets past this are refused by name, long before a database would overflow on them.
MAX_OFFSET = 1_000_000_000


def _storable(value: Any) -> Any:
    """Text and JSON every database stores as given (PostgreSQL refuses NUL; none stores a lone
    surrogate), or a 400 naming the field."""
    problem = sanitise.unstorable_json(value)
    if problem is not None:
        raise PydanticCustomError("unstorable", "contains {problem}", {"problem": problem})
    return value


Text = Annotated[str, AfterValidator(_storable)]

class OrchestrateIn(Schema):
    model_config = ConfigDict(extra="ignore")

    task: Text = Field(description="What to do, in plain words.")
    session_id: Text | None = Field(None, description="Continue this session's conversation.")
    tier: int | None = Field(None, ge=1, le=3, description="Context tier (1–3).")
    respond_with_claude: bool | None = Field(
        None, description="Have the chat-role model write the final answer (default true).")
    respond_with_final: bool | None = Field(None, description="Alias of respond_with_claude.")
    include_long: bool = True
    include_mid: bool = True
    include_short: bool = True
    user: Text | None = Field(None, description="If given, must be the token's own user.")
    persona: Text | None = None
    chat_role: Text = Field("chat", max_length=64)
    off_record: bool = False
    callback_url: Text | None = Field(
        None, max_length=500, description="POST the job's JSON (as `GET /orchestrate/<id>` answers) here when the job "
                                          "ends, signed with your callback secret (Settings → Callbacks): headers "
                                          "`X-Cortex-Signature: sha256=<hex HMAC-SHA256 of the body>`, "
                                          "`X-Cortex-Delivery` (the same on every retry) and `X-Cortex-Event`.")
    callback_on_confirmation: bool = Field(
        False, description="Also POST to callback_url when the job starts waiting for a confirmation.")


class OrchestrateOut(Schema):
    job_id: uuid.UUID
    status: str


class PendingTool(Schema):
    id: str
    name: str
    args: Any = None
    risk: str
    interrupted: bool = False
    args_digest: str = Field(description="Digest of this call and its arguments as shown here; send it back with "
                                         "a decision to have it refused (409) if the call is no longer exactly this.")


class PendingConfirmation(Schema):
    tools: list[PendingTool]
    message: str


class JobOut(Schema):
    job_id: uuid.UUID
    status: str
    outcome: str | None = None
    task: str
    created_at: str
    completed_at: str | None = None
    session_id: str | None = None
    response: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    backend: str | None = None
    backend_label: str | None = None
    host: str | None = None
    gemini_summary: str | None = None
    error: str | None = None
    pending_confirmation: PendingConfirmation | None = None
    origin: str = Field("web", description="Who or what started the job: web, api, schedule, hook, mcp, command.")
    origin_detail: dict[str, Any] | None = Field(
        None, description="The schedule (its id, due time, whether it fired late) or hook (slug, delivery) behind it.")


class ConfirmIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tool_call_id: Text | None = None
    args: Annotated[dict[str, Any], AfterValidator(_storable)] | None = Field(
        None, description="Edited arguments, checked against the tool's schema.")
    remember: Literal["job"] | None = Field(None, description='"job": approve this tool for the rest of the job.')
    args_digest: Text | None = Field(
        None, max_length=64, description="The `args_digest` of the pending call as you saw it (needs tool_call_id): "
                                         "if the call's arguments are no longer those, 409 and nothing changes.")


class DenyIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tool_call_id: Text | None = None
    reason: Text = Field("", max_length=2000)
    args_digest: Text | None = Field(
        None, max_length=64, description="The `args_digest` of the pending call as you saw it (needs tool_call_id): "
                                         "if the call's arguments are no longer those, 409 and nothing changes.")


class Detail(Schema):
    detail: str


ERRORS = {400: Detail, 401: Detail, 404: Detail, 409: Detail}


# --- Endpoints ---------------------------------------------------------------------------------

@api.post("/orchestrate", response={202: OrchestrateOut, 403: Detail, 413: Detail, **ERRORS},
          summary="Submit a task", tags=["orchestrate"])
def orchestrate(request: HttpRequest, payload: OrchestrateIn):
    if payload.user is not None and payload.user != request.user.get_username():
        raise HttpError(403, "user must be the token's own user")
    respond = payload.respond_with_final
    if respond is None:
        respond = payload.respond_with_claude if payload.respond_with_claude is not None else True
    job = services.job_submit(
        user=request.user,
        task=payload.task,
        session_id=payload.session_id,
        persona=payload.persona,
        options=services.JobOptions(
            tier=payload.tier, respond_with_final=respond, include_long=payload.include_long,
            include_mid=payload.include_mid, include_short=payload.include_short,
            chat_role=payload.chat_role, off_record=payload.off_record),
        origin=JobOrigin.API,
        callback_url=payload.callback_url,
        callback_on_confirmation=payload.callback_on_confirmation,
    )
    return Status(202, {"job_id": job.id, "status": job.status})


@api.get("/orchestrate", response={200: list[JobOut], **ERRORS}, summary="List your jobs, newest first",
         tags=["orchestrate"])
def list_jobs(request: HttpRequest, limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0, le=MAX_OFFSET),
              status: JobStatus | None = None):
    jobs = selectors.jobs_for_user(request.user, status=status).prefetch_related("tool_calls")
    return [job_payload(job) for job in jobs[offset:offset + limit]]


@api.get("/orchestrate/{job_id}", response={200: JobOut, **ERRORS}, summary="A job's status and answer",
         tags=["orchestrate"])
def job_status(request: HttpRequest, job_id: str):
    return job_payload(selectors.job_for_user(request.user, job_id))


@api.post("/orchestrate/{job_id}/confirm", response={200: OrchestrateOut, **ERRORS},
          summary="Approve pending tool calls (all of them, or one by tool_call_id)", tags=["orchestrate"])
def confirm(request: HttpRequest, job_id: str, payload: ConfirmIn | None = Body(None)):
    payload = payload or ConfirmIn()
    job = services.job_confirm(user=request.user, job_id=job_id, tool_call_id=payload.tool_call_id,
                               args=payload.args, remember=payload.remember, args_digest=payload.args_digest)
    return {"job_id": job.id, "status": job.status}


@api.post("/orchestrate/{job_id}/deny", response={200: OrchestrateOut, **ERRORS},
          summary="Deny pending tool calls (all of them, or one by tool_call_id)", tags=["orchestrate"])
def deny(request: HttpRequest, job_id: str, payload: DenyIn | None = Body(None)):
    payload = payload or DenyIn()
    job = services.job_deny(user=request.user, job_id=job_id, tool_call_id=payload.tool_call_id,
                            reason=payload.reason, args_digest=payload.args_digest)
    return {"job_id": job.id, "status": job.status}


@api.post("/orchestrate/{job_id}/cancel", response={200: OrchestrateOut, **ERRORS}, summary="Cancel a job",
          tags=["orchestrate"])
def cancel(request: HttpRequest, job_id: str):
    job = services.job_cancel(user=request.user, job_id=job_id)
    return {"job_id": job.id, "status": job.status}


# --- Schedules (their own package; the router joins this API and its tokens) --------------------

from .triggers.api import router as schedules_router  # noqa: E402  (it builds on the schemas above)

api.add_router("/schedules", schedules_router)

from .delivery.api import router as delivery_router  # noqa: E402  (its endpoints share this API's auth and errors)

api.add_router("", delivery_router)
