"""The Tool servers page and the admin's audit of tool servers: who may see and change what."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from orchestrator.mcp import services as mcp_services
from orchestrator.mcp.models import ServerChange, ServerTool, ToolServer
from tests.conftest import signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def site_server():
    """A site-wide server with tools as a refresh would store them (no connection needed here)."""
    server = mcp_services.server_add(by=None, name="ha", site_wide=True, url="https://ha.example.org/api/mcp",
                                     headers={"Authorization": "Bearer ha-long-lived-token"})
    mcp_services.server_tools_store(server_id=server.pk, listing=[
        {"name": "HassTurnOn", "description": "Turns on a device", "input_schema": {"type": "object"},
         "annotations": {"readOnlyHint": False, "destructiveHint": False}},
        {"name": "GetLiveContext", "description": "Reads the state of the home", "input_schema": {"type": "object"},
         "annotations": {"readOnlyHint": True}},
        {"name": "bad schema", "input_schema": {"type": 12}, "annotations": None},
    ])
    return server


def test_the_page_shows_tools_risks_and_header_names_but_never_secrets(alice, site_server):
    page = alice.get("/settings/tool-servers/").content.decode()
    assert "ha__HassTurnOn" in page and "ha__GetLiveContext" in page
    assert "Authorization: ••••" in page and "ha-long-lived-token" not in page
    assert "left out: bad schema" in page  # a tool whose schema is broken is not offered, and it says so
    assert ServerTool.objects.filter(server=site_server).count() == 2


def test_it_needs_a_sign_in_and_refuses_gets_on_its_actions(client: Client, alice, site_server):
    response = client.get("/settings/tool-servers/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert alice.get(f"/settings/tool-servers/{site_server.pk}/remove/").status_code == 303
    assert ToolServer.objects.filter(pk=site_server.pk).exists()


def test_csrf_is_required_on_its_forms(owner, site_server):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert strict.post("/settings/tool-servers/new/", {"name": "x", "url": "https://example.com/mcp"}).status_code \
        == 403
    assert not ToolServer.objects.filter(name="x").exists()


def test_only_staff_change_site_wide_servers_and_override_risks(alice, owner, site_server):
    alice.post(f"/settings/tool-servers/{site_server.pk}/remove/")
    alice.post(f"/settings/tool-servers/{site_server.pk}/enabled/", {"enabled": "0"})
    tool = ServerTool.objects.get(name="HassTurnOn")
    alice.post(f"/settings/tool-servers/tools/{tool.pk}/risk/", {"risk": "low"})
    site_server.refresh_from_db()
    tool.refresh_from_db()
    assert site_server.enabled and tool.risk_override == ""
    assert "only staff" in alice.get("/settings/tool-servers/").content.decode()

    owner.is_staff = True
    owner.save()
    alice.post(f"/settings/tool-servers/tools/{tool.pk}/risk/", {"risk": "low"})
    tool.refresh_from_db()
    assert tool.risk_override == "low"


def test_another_persons_server_is_a_404(owner, outsider, settings):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    theirs = mcp_services.server_add(by=outsider, name="bobs", site_wide=False, url="https://93.184.215.14/mcp")
    alice = signed_in(owner)
    for action in ("test", "refresh", "enabled", "remove"):
        assert alice.post(f"/settings/tool-servers/{theirs.pk}/{action}/").status_code == 404
    assert "bobs" not in alice.get("/settings/tool-servers/").content.decode()
    assert ToolServer.objects.filter(pk=theirs.pk, enabled=True).exists()


def test_a_person_without_staff_rights_cannot_add_a_command(alice):
    response = alice.post("/settings/tool-servers/new/", {"name": "shell", "command": "rm -rf /"})
    assert response.status_code == 400
    assert not ToolServer.objects.exists()


def test_the_admin_shows_the_audit_and_changes_nothing(django_user_model, site_server):
    root = django_user_model.objects.create_superuser("root", password="root-password-1")
    client = signed_in(root)
    listing = client.get(reverse("admin:cortex_mcp_serverchange_changelist")).content.decode()
    assert "tools refreshed" in listing and "added" in listing
    change = ServerChange.objects.filter(action="added").get()
    assert change.detail["headers"] == ["Authorization"] and "ha-long-lived-token" not in str(change.detail)
    server_page = client.get(reverse("admin:cortex_mcp_toolserver_change", args=[site_server.pk])).content.decode()
    assert "fernet1:" not in server_page and "ha-long-lived-token" not in server_page
    assert client.get(reverse("admin:cortex_mcp_toolserver_add")).status_code == 403
    client.post(reverse("admin:cortex_mcp_toolserver_delete", args=[site_server.pk]), {"post": "yes"})
    assert ToolServer.objects.filter(pk=site_server.pk).exists()
