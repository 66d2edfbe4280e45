"""Admin is the audit trail: find a job by a word of its task, see who decided which call with which
arguments, export it as CSV; history can be read but never edited or deleted there."""

from __future__ import annotations

import csv
import io
import re

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from orchestrator import services
from orchestrator.models import ApiToken, Job, JobEvent, ToolCall

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def root(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", password="root-password-1")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def decided_job(owner, engine, default_persona) -> Job:
    """Alice's note job: she edited the call's arguments before it ran."""
    job = services.job_submit(user=owner, task="Write a note: buy milk")
    async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    call = job.tool_calls.get()
    services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id,
                         args={"path": "notes/shopping.txt", "content": "buy oat milk"})
    return async_to_sync(engine.run_until)(job.pk, "complete")


def rows_of(response) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_a_superuser_finds_a_job_by_a_word_of_its_task(root, owner, decided_job):
    services.job_submit(user=owner, task="Summarise the news")
    listing = root.get(reverse("admin:orchestrator_job_changelist"), {"q": "milk"}).content.decode()
    assert "Write a note: buy milk" in listing and "Summarise the news" not in listing
    for filters in ({"status__exact": "complete"}, {"user__id__exact": owner.pk}, {"backend": "demo:demo"},
                    {"created_at__gte": "2000-01-01 00:00:00+00:00"}):
        assert "Write a note: buy milk" in root.get(reverse("admin:orchestrator_job_changelist"),
                                                    filters).content.decode()


def test_the_job_shows_who_decided_which_call_with_which_arguments(root, decided_job):
    page = root.get(reverse("admin:orchestrator_job_change", args=[decided_job.pk])).content.decode()
    [decided_by] = re.findall(r'<td class="field-decided_by">.*?</td>', page, re.S)
    assert ">alice</a>" in decided_by
    assert re.search(r'<td class="field-decision">\s*<p>Edited</p>', page)
    assert "notes/shopping.txt" in page and "buy oat milk" in page  # what ran
    assert "notes/demo-note.txt" in page  # what the model proposed
    assert "tool.decided" in page and "job.status" in page  # the events, inline


def test_the_decisions_export_as_csv(root, decided_job):
    response = root.post(reverse("admin:orchestrator_job_changelist"),
                         {"action": "export_decisions", "_selected_action": [decided_job.pk]})
    [row] = rows_of(response)
    assert row["decision"] == "edited" and row["decided by"] == "alice" and row["tool"] == "workspace_write"
    assert row["arguments"] == '{"content": "buy oat milk", "path": "notes/shopping.txt"}'
    assert row["original arguments"] == '{"content": "buy milk", "path": "notes/demo-note.txt"}'
    assert row["job"] == str(decided_job.pk)

    call = decided_job.tool_calls.get()
    from_calls = root.post(reverse("admin:orchestrator_toolcall_changelist"),
                           {"action": "export_decisions", "_selected_action": [call.pk]})
    assert rows_of(from_calls) == [row]


def test_jobs_export_as_csv_without_formulas(root, owner):
    job = services.job_submit(user=owner, task="=HYPERLINK(\"https://evil.example\")")
    response = root.post(reverse("admin:orchestrator_job_changelist"),
                         {"action": "export_jobs", "_selected_action": [job.pk]})
    [row] = rows_of(response)
    assert row["task"] == "'=HYPERLINK(\"https://evil.example\")" and row["user"] == "alice"
    assert row["status"] == "queued"


def test_history_cannot_be_edited_or_deleted(root, decided_job):
    call = decided_job.tool_calls.get()
    event = decided_job.events.first()
    change = reverse("admin:orchestrator_job_change", args=[decided_job.pk])
    page = root.get(change).content.decode()
    assert 'name="_save"' not in page and "Delete" not in page.split('id="content-main"')[1].split("<footer")[0]
    assert root.post(change, {"task": "rewritten", "status": "error"}).status_code == 403
    assert root.post(reverse("admin:orchestrator_job_delete", args=[decided_job.pk]), {"post": "yes"}).status_code \
        == 403
    call_change = reverse("admin:orchestrator_toolcall_change", args=[call.pk])
    assert root.post(call_change, {"decision": "denied"}).status_code == 403
    assert root.post(reverse("admin:orchestrator_toolcall_delete", args=[call.pk]), {"post": "yes"}).status_code \
        == 403
    assert root.get(reverse("admin:orchestrator_job_add")).status_code == 403
    listing = root.get(reverse("admin:orchestrator_job_changelist")).content.decode()
    assert "delete_selected" not in listing
    refused = root.post(reverse("admin:orchestrator_job_changelist"),
                        {"action": "delete_selected", "_selected_action": [decided_job.pk], "post": "yes"})
    assert refused.status_code in (200, 302)
    decided_job.refresh_from_db()
    call.refresh_from_db()
    assert decided_job.task == "Write a note: buy milk" and call.decision == "edited"
    assert JobEvent.objects.filter(pk=event.pk).exists() and Job.objects.filter(pk=decided_job.pk).exists()


def test_tokens_show_only_their_hash_and_can_be_revoked(root, owner):
    token, raw = services.token_create(user=owner, name="cron")
    page = root.get(reverse("admin:orchestrator_apitoken_change", args=[token.pk])).content.decode()
    assert token.digest in page and raw not in page
    root.post(reverse("admin:orchestrator_apitoken_changelist"),
              {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert services.token_authenticate(raw=raw) is None


def test_personas_and_policies_are_listed(root, owner, default_persona):
    services.policy_update(user=owner, max_risk="low", overrides={"http_get": "include"}, confirmations={})
    assert "assistant" in root.get(reverse("admin:orchestrator_persona_changelist")).content.decode()
    policies = root.get(reverse("admin:orchestrator_toolpolicy_changelist")).content.decode()
    assert "alice" in policies and "low" in policies


def test_people_without_staff_rights_are_kept_out(owner, decided_job):
    client = Client()
    client.force_login(owner)
    response = client.get(reverse("admin:orchestrator_job_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert ToolCall.objects.get().decision == "edited"


@pytest.mark.django_db(transaction=True)
def test_the_policys_reason_and_the_persons_reason_are_kept_apart(owner, engine, default_persona):
    job = services.job_submit(user=owner, task="Write a note: buy milk")
    async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    services.job_deny(user=owner, job_id=job.pk, reason="not now")
    call = job.tool_calls.get()
    assert call.verdict_reason == "medium risk asks by default"
    assert call.reason == "not now"


def test_the_admin_task_column_shows_the_whole_task_on_hover(root, owner, default_persona):
    task = "Write a note: " + ", ".join(["a long shopping list"] * 10)
    services.job_submit(user=owner, task=task)
    html = root.get(reverse("admin:orchestrator_job_changelist")).content.decode()
    assert f'title="{task}"' in html
    assert task[:89] + "…" in html
