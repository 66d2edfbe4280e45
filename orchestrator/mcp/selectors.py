"""Reads of tool servers scoped to a person: the site-wide ones and their own, nobody else's."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404

from .models import ServerChange, ServerTool, ToolServer


def servers_for_user(user: AbstractBaseUser) -> QuerySet[ToolServer]:
    return (ToolServer.objects.filter(Q(owner=None) | Q(owner=user))
            .prefetch_related(Prefetch("tools", queryset=ServerTool.objects.order_by("name"))))


def server_for_user(user: AbstractBaseUser, server_id: Any) -> ToolServer:
    """A server the person may see; 404 for anyone else's (or none)."""
    if not str(server_id).isdigit():
        raise Http404("not found")
    server = servers_for_user(user).filter(pk=int(server_id)).first()
    if server is None:
        raise Http404("not found")
    return server


def tool_for_user(user: AbstractBaseUser, tool_id: Any) -> ServerTool:
    if not str(tool_id).isdigit():
        raise Http404("not found")
    row = (ServerTool.objects.select_related("server")
           .filter(Q(server__owner=None) | Q(server__owner=user), pk=int(tool_id)).first())
    if row is None:
        raise Http404("not found")
    return row


def recent_changes_for_user(user: AbstractBaseUser, limit: int = 20) -> list[ServerChange]:
    """The audit trail of the servers the person may see (staff: all of it)."""
    changes = ServerChange.objects.select_related("actor")
    if not user.is_staff:
        names = servers_for_user(user).values_list("name", flat=True)
        changes = changes.filter(Q(server_name__in=names) | Q(actor=user))
    return list(changes[:limit])
