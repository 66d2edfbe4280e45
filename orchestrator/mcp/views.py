"""Settings → Tool servers: add MCP servers, test them, see and refresh their tools, disable or
remove them; staff override a tool's risk. Each tool's effective column is the policy's own
decision, the one the engine makes for a new job."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from .. import selectors as core_selectors
from ..policy import decide
from ..services import ServiceError
from ..tools.registry import registry
from ..views import login_required, page_or_fragment, post_only, redirect_after_write
from . import selectors, services
from .forms import RiskOverrideForm, ServerForm

TEMPLATE = "settings/tool_servers.html"


def _context(request: HttpRequest, form: ServerForm | None = None) -> dict[str, Any]:
    policy = core_selectors.policy_context_for_user(request.user)
    servers = []
    for server in selectors.servers_for_user(request.user):
        rows = []
        for row in server.tools.all():
            tool = registry.get(row.exposed_name)
            decision = decide(row.exposed_name, tool, policy) if tool is not None else None
            risk, risk_source = row.risk
            derived, _ = row.derived
            rows.append({"row": row, "risk": risk, "risk_source": risk_source, "derived": derived,
                         "decision": decision})
        servers.append({"server": server, "rows": rows, "may_change": request.user.is_staff or (
            server.owner_id == request.user.pk), "header_names": server.secret_names("headers"),
            "env_names": server.secret_names("env")})
    return {"section": "settings", "servers": servers, "staff": request.user.is_staff,
            "form": form or ServerForm(staff=request.user.is_staff),
            "changes": selectors.recent_changes_for_user(request.user)}


@login_required
@require_GET
def server_list(request: HttpRequest) -> HttpResponse:
    return page_or_fragment(request, TEMPLATE, _context(request))


@login_required
@post_only("tool-servers")
def server_create(request: HttpRequest) -> HttpResponse:
    form = ServerForm(request.POST, staff=request.user.is_staff)
    if form.is_valid():
        data = form.cleaned_data
        argv = data.get("argv") or []
        try:
            server = services.server_add(
                by=request.user, name=data["name"], site_wide=bool(data.get("site_wide")),
                command=argv[0] if argv else "", args=argv[1:], env=data.get("env_pairs"),
                url=data.get("url", "").strip(), headers=data.get("header_pairs"), timeout=data.get("timeout"))
        except ServiceError as error:
            form.add_error(None, error.message)
        else:
            _, problem = services.server_refresh(by=request.user, server_id=server.pk)
            if problem:
                messages.warning(request, f"Added {server.name}, but its tools could not be listed: {problem}")
            else:
                messages.success(request, f"Added {server.name}; its tools are listed below.")
            return redirect_after_write(request, reverse("tool-servers"))
    return page_or_fragment(request, TEMPLATE, _context(request, form), fragment="server-form", status=400)


def _act(request: HttpRequest, action: Any, **kwargs: Any) -> HttpResponse:
    try:
        text = action(**kwargs)
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        if text:
            messages.info(request, text)
    return redirect_after_write(request, reverse("tool-servers"))


@login_required
@post_only("tool-servers")
def server_test(request: HttpRequest, server_id: int) -> HttpResponse:
    server = selectors.server_for_user(request.user, server_id)

    def test() -> str:
        worked, what = services.server_test(by=request.user, server_id=server.pk)
        return f"{server.name}: {what}" if worked else f"{server.name}: the test failed: {what}"

    return _act(request, test)


@login_required
@post_only("tool-servers")
def server_refresh(request: HttpRequest, server_id: int) -> HttpResponse:
    server = selectors.server_for_user(request.user, server_id)

    def refresh() -> str:
        refreshed, problem = services.server_refresh(by=request.user, server_id=server.pk)
        if problem:
            return f"{server.name}: could not refresh: {problem}"
        return f"{server.name}: {refreshed.tools.count()} tools listed."

    return _act(request, refresh)


@login_required
@post_only("tool-servers")
def server_toggle(request: HttpRequest, server_id: int) -> HttpResponse:
    server = selectors.server_for_user(request.user, server_id)
    enabled = request.POST.get("enabled") == "1"

    def toggle() -> str:
        services.server_set_enabled(by=request.user, server_id=server.pk, enabled=enabled)
        return f"{server.name} {'enabled' if enabled else 'disabled: its tools are not offered'}."

    return _act(request, toggle)


@login_required
@post_only("tool-servers")
def server_remove(request: HttpRequest, server_id: int) -> HttpResponse:
    server = selectors.server_for_user(request.user, server_id)

    def remove() -> str:
        services.server_remove(by=request.user, server_id=server.pk)
        return f"{server.name} removed, with its tools."

    return _act(request, remove)


@login_required
@post_only("tool-servers")
def tool_risk(request: HttpRequest, tool_id: int) -> HttpResponse:
    row = selectors.tool_for_user(request.user, tool_id)
    form = RiskOverrideForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose low, medium, high, or the annotation's risk.")
        return redirect_after_write(request, reverse("tool-servers"))

    def override() -> str:
        services.tool_risk_override(by=request.user, tool_id=row.pk, risk=form.cleaned_data["risk"])
        return f"{row.exposed_name}: risk {form.cleaned_data['risk'] or 'as annotated'}."

    return _act(request, override)
