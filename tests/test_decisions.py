"""Decisions bound to what the person saw: a decision carries the digest of the arguments shown and is
refused (409, nothing changed) when the call is no longer exactly that; edited arguments pass the
tool's own rules before they are approved; a decided card keeps its place in the inbox."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from orchestrator import job_page, services
from orchestrator.models import Job, ToolCall
from orchestrator.tools.registry import ArgumentsInvalid, ToolContext, registry
from tests.pages import answered

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}
ESCAPE = {"path": "../../etc/passwd", "content": "root::0:0"}


@pytest.fixture
def awaiting_job(owner, engine, default_persona):
    """A job of alice's paused on a gated call: the demo model writes a note (medium risk asks)."""
    def make(task: str = "Write a note: buy milk") -> Job:
        job = services.job_submit(user=owner, task=task)
        return async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    return make


def unchanged(job: Job, call: ToolCall) -> bool:
    """The call still waits as it did, and the job's log has no new event."""
    fresh = ToolCall.objects.get(pk=call.pk)
    job_now = Job.objects.get(pk=job.pk)
    return (fresh.status == "awaiting" and fresh.decision == "" and fresh.decided_by is None
            and job_now.status == "awaiting_confirmation" and job_now.last_seq == job.last_seq
            and job_now.events.count() == job.events.count())


def change_arguments(call: ToolCall, args: dict) -> None:
    """The call's arguments change after the page was shown (as an edit elsewhere would)."""
    ToolCall.objects.filter(pk=call.pk).update(args=args)


# --- The digest ---------------------------------------------------------------------------------

def test_the_digest_is_sha256_of_the_canonical_call_and_arguments(awaiting_job):
    call = awaiting_job().tool_calls.get()
    canonical = json.dumps({"args": call.args, "call": call.pk, "id": call.call_id, "name": call.name},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert call.args_digest == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_digest_changes_with_any_argument_and_differs_between_calls(awaiting_job):
    first, second = (awaiting_job().tool_calls.get() for _ in range(2))
    assert first.args == second.args and first.args_digest != second.args_digest
    digest = first.args_digest
    first.args = {**first.args, "content": "buy milk "}
    assert first.args_digest != digest


# --- The service --------------------------------------------------------------------------------

@pytest.mark.parametrize("decide", [services.job_confirm, services.job_deny])
def test_a_decision_on_the_arguments_shown_applies(owner, awaiting_job, decide):
    job = awaiting_job()
    call = job.tool_calls.get()
    decide(user=owner, job_id=job.pk, tool_call_id=call.call_id, args_digest=call.args_digest)
    call.refresh_from_db()
    assert call.decided_by == owner and call.decision in ("approved", "denied")


@pytest.mark.parametrize("decide", [services.job_confirm, services.job_deny])
def test_a_stale_digest_is_a_conflict_and_changes_nothing(owner, awaiting_job, decide):
    job = awaiting_job()
    call = job.tool_calls.get()
    shown = call.args_digest
    change_arguments(call, {"path": "notes/other.txt", "content": "sell the house"})
    with pytest.raises(services.Conflict, match="not the call you were shown"):
        decide(user=owner, job_id=job.pk, tool_call_id=call.call_id, args_digest=shown)
    assert unchanged(job, call)


@pytest.mark.parametrize("digest", ["", "0" * 64])
def test_a_missing_or_made_up_digest_matches_no_call(owner, awaiting_job, digest):
    job = awaiting_job()
    call = job.tool_calls.get()
    with pytest.raises(services.Conflict):
        services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id, args_digest=digest)
    assert unchanged(job, call)


def test_another_calls_digest_does_not_decide_this_one(owner, awaiting_job):
    first, second = awaiting_job(), awaiting_job()
    call, other = first.tool_calls.get(), second.tool_calls.get()
    assert call.call_id == other.call_id and call.args == other.args  # the same call, as far as the model says
    with pytest.raises(services.Conflict):
        services.job_confirm(user=owner, job_id=first.pk, tool_call_id=call.call_id, args_digest=other.args_digest)
    assert unchanged(first, call) and unchanged(second, other)


def test_a_digest_needs_the_call_it_belongs_to(owner, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    with pytest.raises(services.Invalid, match="args_digest needs a tool_call_id"):
        services.job_confirm(user=owner, job_id=job.pk, args_digest=call.args_digest)
    assert unchanged(job, call)


@pytest.mark.parametrize("path,problem", [
    ("../../etc/passwd", "contains '..'; paths may not leave the workspace"),
    ("/etc/passwd", "is absolute"),
    (".", "give the path of a file, not the workspace root"),
])
def test_edited_arguments_must_follow_the_tools_own_rules(owner, awaiting_job, path, problem):
    job = awaiting_job()
    call = job.tool_calls.get()
    with pytest.raises(services.Invalid, match=re.escape(problem)):
        services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id,
                             args={"path": path, "content": "x"}, args_digest=call.args_digest)
    assert unchanged(job, call)


def test_an_edited_path_through_a_planted_link_is_refused(owner, awaiting_job, settings, tmp_path):
    job = awaiting_job()
    call = job.tool_calls.get()
    workspace = Path(settings.CORTEX_WORKSPACE_ROOT) / str(owner.pk)
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(services.Invalid, match="leads outside the workspace"):
        services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id,
                             args={"path": "elsewhere/planted.txt", "content": "x"})
    assert unchanged(job, call)


def test_edited_arguments_within_the_rules_are_approved(owner, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    services.job_confirm(user=owner, job_id=job.pk, tool_call_id=call.call_id,
                         args={"path": "notes/oat.txt", "content": "oat milk"}, args_digest=call.args_digest)
    call.refresh_from_db()
    assert call.decision == "edited" and call.args == {"path": "notes/oat.txt", "content": "oat milk"}


@pytest.mark.parametrize("url,problem", [
    ("http://user:secret@example.com/", "credentials"),
    ("http:///nohost", "no host"),
    ("https://[::1/", "not a valid URL"),
])
def test_http_get_checks_the_form_of_its_url(tmp_path, url, problem):
    context = ToolContext(user_id=1, username="alice", job_id="job", workspace=tmp_path)
    with pytest.raises(ArgumentsInvalid, match=problem):
        registry.get("http_get").check_args({"url": url}, context)
    registry.get("http_get").check_args({"url": "https://example.com/page"}, context)


@pytest.mark.parametrize("name,args", [
    ("workspace_list", {"path": "../x"}), ("workspace_read", {"path": "../x"}),
    ("workspace_write", {"path": "../x", "content": ""}), ("workspace_delete", {"path": "../x"}),
    ("workspace_delete", {"path": "."}),
])
def test_every_workspace_tool_checks_its_paths(tmp_path, name, args):
    context = ToolContext(user_id=1, username="alice", job_id="job", workspace=tmp_path)
    with pytest.raises(ArgumentsInvalid, match=f"invalid arguments for {name}"):
        registry.get(name).check_args(args, context)


# --- The API ------------------------------------------------------------------------------------

@pytest.fixture
def awaiting(api, awaiting_job):
    job = awaiting_job()
    return job, job.tool_calls.get()


def test_pending_calls_carry_their_digest(api, awaiting):
    job, call = awaiting
    [pending] = api.get(f"/orchestrate/{job.pk}").json()["pending_confirmation"]["tools"]
    assert pending["args_digest"] == call.args_digest and pending["args"] == call.args


@pytest.mark.parametrize("action", ["confirm", "deny"])
def test_the_api_applies_a_decision_with_the_digest_shown(api, awaiting, action):
    job, call = awaiting
    response = api.post(f"/orchestrate/{job.pk}/{action}", {"tool_call_id": call.call_id,
                                                            "args_digest": call.args_digest})
    assert response.status_code == 200
    call.refresh_from_db()
    assert call.decision in ("approved", "denied")


@pytest.mark.parametrize("action", ["confirm", "deny"])
def test_the_api_refuses_a_stale_digest_with_409_and_changes_nothing(api, awaiting, action):
    job, call = awaiting
    shown = api.get(f"/orchestrate/{job.pk}").json()["pending_confirmation"]["tools"][0]["args_digest"]
    change_arguments(call, {"path": "notes/other.txt", "content": "sell the house"})
    response = api.post(f"/orchestrate/{job.pk}/{action}", {"tool_call_id": call.call_id, "args_digest": shown})
    assert response.status_code == 409
    assert "not the call you were shown" in response.json()["detail"]
    assert unchanged(job, call)


def test_the_api_refuses_an_edit_that_leaves_the_workspace(api, awaiting):
    job, call = awaiting
    response = api.post(f"/orchestrate/{job.pk}/confirm", {"tool_call_id": call.call_id, "args": ESCAPE,
                                                           "args_digest": call.args_digest})
    assert response.status_code == 400
    assert response.json()["detail"] == ("invalid arguments for workspace_write: '../../etc/passwd' contains '..'; "
                                         "paths may not leave the workspace")
    assert unchanged(job, call)


def test_the_digest_stays_optional_in_the_api(api, awaiting):
    job, call = awaiting
    assert api.post(f"/orchestrate/{job.pk}/confirm", {"tool_call_id": call.call_id}).status_code == 200


def test_the_api_schema_documents_the_digest(api, alice):
    schema = alice.get("/api/openapi.json").json()["components"]["schemas"]
    assert "args_digest" in schema["PendingTool"]["required"]
    assert "args_digest" in schema["ConfirmIn"]["properties"] and "args_digest" in schema["DenyIn"]["properties"]


# --- The pages ----------------------------------------------------------------------------------

def shown(call, **fields) -> dict:
    return {"args_digest": call.args_digest, **fields}


def test_every_decision_form_carries_the_digest_of_what_it_shows(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    for page in (reverse("job-detail", args=[job.pk]), reverse("confirmations")):
        html = alice.get(page).content.decode()
        assert html.count(f'name="args_digest" value="{call.args_digest}"') == 3  # approve (and for the rest of the job), deny, edit


@pytest.mark.parametrize("name", ["call-approve", "call-deny"])
def test_a_stale_card_is_refused_with_the_call_as_it_is_now(alice, awaiting_job, name):
    job = awaiting_job()
    call = job.tool_calls.get()
    form = shown(call)
    change_arguments(call, {"path": "notes/other.txt", "content": "sell the house"})
    response = alice.post(reverse(name, args=[job.pk, call.pk]), form, headers=HTMX)
    html = response.content.decode()
    assert answered(response) == 409 and "not the call you were shown" in html
    assert "sell the house" in html and f'value="{ToolCall.objects.get(pk=call.pk).args_digest}"' in html
    assert unchanged(job, call)


@pytest.mark.parametrize("name", ["call-approve", "call-deny", "call-edit"])
def test_a_form_without_a_digest_is_refused(alice, awaiting_job, name):
    """A page from before the digests cannot decide: it may show something else."""
    job = awaiting_job()
    call = job.tool_calls.get()
    fields = {f"call-{call.pk}-path": "notes/x.txt", f"call-{call.pk}-content": "x"}
    fragment = alice.post(reverse(name, args=[job.pk, call.pk]), fields, headers=HTMX)
    assert answered(fragment) == 409 and "not the call you were shown" in fragment.content.decode()
    page = alice.post(reverse(name, args=[job.pk, call.pk]), fields, follow=True)
    assert page.status_code == 200 and "not the call you were shown" in page.content.decode()
    assert unchanged(job, call)


def test_an_edit_that_leaves_the_workspace_stays_on_the_card_with_what_was_typed(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    prefix = f"call-{call.pk}"
    fields = shown(call, **{f"{prefix}-path": ESCAPE["path"], f"{prefix}-content": ESCAPE["content"]})
    response = alice.post(reverse("call-edit", args=[job.pk, call.pk]), fields, headers=HTMX)
    html = response.content.decode()
    assert answered(response) == 400 and html.lstrip().startswith(f'<article id="call-{call.pk}"')
    assert "paths may not leave the workspace" in html
    assert 'value="../../etc/passwd"' in html and '<details class="edit-args" open>' in html
    assert " disabled>" not in html  # the person can correct it
    assert unchanged(job, call)

    page = alice.post(reverse("call-edit", args=[job.pk, call.pk]), fields)
    assert page.status_code == 400 and "paths may not leave the workspace" in page.content.decode()
    assert unchanged(job, call)


def test_a_decided_card_keeps_its_shape_with_its_controls_disabled(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    pending = alice.get(reverse("confirmations")).content.decode()
    response = alice.post(reverse("call-approve", args=[job.pk, call.pk]),
                          shown(call, next=reverse("confirmations")), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Approved ✓ — undo is not possible." in html
    assert '<fieldset class="card-controls" disabled>' in html
    assert 'class="confirm-job"' in html and "Approve" in html  # as in the inbox: the job named, same buttons
    assert pending.count('class="confirm-job"') == 1


def test_without_javascript_the_inbox_shows_the_decision_where_the_card_was(alice, awaiting_job, monkeypatch):
    first, second = awaiting_job("Write a note: one"), awaiting_job("Write a note: two")
    call = first.tool_calls.get()
    page = alice.post(reverse("call-approve", args=[first.pk, call.pk]),
                      shown(call, next=reverse("confirmations")), follow=True).content.decode()
    assert page.index("Approved ✓ — undo is not possible.") < page.index("Write a note: two")
    other = second.tool_calls.get().pk
    assert re.search(r"inbox=([\w,]*)", page).group(1) == f"{call.pk}d,{other}"

    monkeypatch.setattr(job_page, "DECIDED_CARD_SECONDS", 0)
    later = alice.get(reverse("confirmations")).content.decode()
    assert "Write a note: one" not in later and re.search(r"inbox=([\w,]*)", later).group(1) == str(other)
