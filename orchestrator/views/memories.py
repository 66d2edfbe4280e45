"""The memory board: add, edit and delete what the assistant remembers."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import retarget

from .. import selectors, services
from ..forms import (
    MemoryForm,
)
from ..models import Memory
from .common import login_required, page_or_fragment, post_only

# The memory being edited has its own field ids, apart from the "add a memory" form on the same page.
EDIT_PREFIX = "edit"


# --- Memories ------------------------------------------------------------------------------------

def _memory_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    tier = request.GET.get("tier", "")
    if tier not in Memory.Tier.values:
        tier = ""
    memories = list(selectors.memories_for_user(request.user, tier=tier or None))
    groups = [{"tier": value, "label": label, "memories": [m for m in memories if m.tier == value]}
              for value, label in Memory.Tier.choices if not tier or tier == value]
    return {"section": "memories", "tier": tier, "groups": groups, "tiers": Memory.Tier.choices,
            "form": MemoryForm(), "editing": None, "edit_form": None, **extra}


@login_required
@require_GET
def memory_list(request: HttpRequest) -> HttpResponse:
    return page_or_fragment(request, "memories/index.html", _memory_context(request), fragment="memory-board",
                            when=request.htmx.target == "memory-board")


@login_required
@post_only("memories")
def memory_create(request: HttpRequest) -> HttpResponse:
    form = MemoryForm(request.POST)
    if form.is_valid():
        try:
            services.memory_save(user=request.user, content=form.cleaned_data["content"],
                                 tier=form.cleaned_data["tier"])
        except services.ServiceError as error:
            form.add_error("content", error.message)
        else:
            if request.htmx:
                # A fresh form in place of the one sent, and the board with the new memory.
                context = _memory_context(request)
                return HttpResponse(render_to_string("memories/index.html#memory-form", context, request)
                                    + render_to_string("memories/index.html#memory-board", {**context, "oob": True},
                                                       request))
            messages.success(request, "Memory saved.")
            return redirect("memories")
    return page_or_fragment(request, "memories/index.html", _memory_context(request, form=form),
                            fragment="memory-form", status=400)


@login_required
@require_http_methods(["GET", "POST"])
def memory_edit(request: HttpRequest, memory_id: int) -> HttpResponse:
    memory = selectors.memory_for_user(request.user, memory_id)
    if request.method == "GET":
        form = MemoryForm(initial={"content": memory.content, "tier": memory.tier}, prefix=EDIT_PREFIX)
        status = 200
    else:
        form = MemoryForm(request.POST, prefix=EDIT_PREFIX)
        if form.is_valid():
            try:
                memory = services.memory_update(user=request.user, memory_id=memory.pk,
                                                content=form.cleaned_data["content"], tier=form.cleaned_data["tier"])
            except services.ServiceError as error:
                form.add_error("content", error.message)
            else:
                if request.htmx:  # its tier may have changed, so the whole board is redrawn
                    return retarget(render(request, "memories/index.html#memory-board", _memory_context(request)),
                                    "#memory-board")
                messages.success(request, "Memory updated.")
                return redirect("memories")
        status = 400
    return page_or_fragment(request, "memories/index.html",
                            _memory_context(request, memory=memory, editing=memory.pk, edit_form=form),
                            fragment="memory-item", status=status)


@login_required
@post_only("memories")
def memory_delete(request: HttpRequest, memory_id: int) -> HttpResponse:
    services.memory_delete(user=request.user, memory_id=memory_id)
    if request.htmx:
        return render(request, "memories/index.html#memory-board", _memory_context(request))
    messages.success(request, "Memory deleted.")
    return redirect("memories")


