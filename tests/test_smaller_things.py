"""Smaller things people noticed: the job form's choices, the task box focused, renaming a
conversation, and the site's icon."""

from __future__ import annotations

from html import unescape

import pytest
from django.test import Client
from django.urls import reverse

from orchestrator import services
from orchestrator.models import Job, RoleAssignment, Session

pytestmark = pytest.mark.django_db


def select_options(html: str, name: str) -> list[str]:
    start = html.index(f'name="{name}"')
    block = html[start:html.index("</select>", start)]
    return [unescape(part.split(">", 1)[1].split("<", 1)[0]) for part in block.split("<option")[1:]]


def test_the_persona_list_shows_the_default_once(alice, default_persona):
    options = select_options(alice.get(reverse("jobs")).content.decode(), "persona")
    assert options == ["Default (assistant)"]
    chosen_by_name = alice.post(reverse("job-submit"), {"task": "Hi", "persona": "assistant", "chat_role": "chat"})
    assert chosen_by_name.status_code == 302


def test_the_chat_role_is_a_choice_of_the_roles_that_exist(owner, alice, default_persona):
    RoleAssignment.objects.create(owner=owner, role="poet")
    html = alice.get(reverse("jobs")).content.decode()
    assert select_options(html, "chat_role") == ["chat", "poet"]
    refused = alice.post(reverse("job-submit"), {"task": "Say hello", "chat_role": "nobody"})
    assert refused.status_code == 400 and "Select a valid choice" in refused.content.decode()
    accepted = alice.post(reverse("job-submit"), {"task": "Say hello", "chat_role": "poet"})
    assert accepted.status_code == 302 and Job.objects.get().options["chat_role"] == "poet"


def test_the_task_box_is_focused_on_the_jobs_page_only(owner, alice, default_persona):
    job = services.job_submit(user=owner, task="Start")
    assert "autofocus" in alice.get(reverse("jobs")).content.decode()
    assert "autofocus" not in alice.get(reverse("session-detail", args=[job.session_id])).content.decode()


@pytest.fixture
def conversation(owner, default_persona) -> Session:
    return services.job_submit(user=owner, task="Plan the trip").session


def test_the_owner_renames_a_conversation(alice, conversation):
    page = alice.get(reverse("session-detail", args=[conversation.pk])).content.decode()
    assert f'action="{reverse("session-rename", args=[conversation.pk])}"' in page
    response = alice.post(reverse("session-rename", args=[conversation.pk]), {"title": "  Lyon   in May "})
    assert response.status_code == 302 and response["Location"] == reverse("session-detail", args=[conversation.pk])
    conversation.refresh_from_db()
    assert conversation.title == "Lyon in May"
    assert "Lyon in May" in alice.get(reverse("sessions")).content.decode()


def test_an_empty_title_is_refused_on_the_page(alice, conversation):
    response = alice.post(reverse("session-rename", args=[conversation.pk]), {"title": "   "})
    assert response.status_code == 400 and "This field is required" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "Plan the trip"


def test_it_refuses_to_rename_other_users_conversations(bob, conversation):
    response = bob.post(reverse("session-rename", args=[conversation.pk]), {"title": "mine now"})
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.title == "Plan the trip"


def test_renaming_needs_the_csrf_token(owner, conversation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(reverse("session-rename", args=[conversation.pk]), {"title": "x"}).status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "Plan the trip"


def test_a_get_on_the_rename_address_shows_the_conversation(alice, conversation):
    response = alice.get(reverse("session-rename", args=[conversation.pk]))
    assert response.status_code == 303 and response["Location"] == reverse("session-detail", args=[conversation.pk])


def test_favicon_ico_leads_to_the_sites_icon(client, alice):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")
    assert 'rel="icon"' in alice.get(reverse("jobs")).content.decode()

