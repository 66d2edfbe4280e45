"""The /orchestrate API: the original's paths and fields, bearer tokens, clear JSON errors."""

import json

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator import services
from orchestrator.models import ApiToken, Job
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

JOB_FIELDS = {"job_id", "status", "outcome", "task", "created_at", "completed_at", "session_id", "response", "tool_calls",
              "backend", "backend_label", "host", "gemini_summary", "error", "pending_confirmation", "origin",
              "origin_detail"}


def submit(api, task="What time is it?", **fields):
    response = api.post("/orchestrate", {"task": task, **fields})
    assert response.status_code == 202, response.content
    return response.json()["job_id"]


@pytest.fixture
def awaiting(api, engine):
    """A job paused on a gated call (the demo model writes a note: medium risk asks)."""
    job_id = submit(api, "Write a note: buy milk")
    async_to_sync(engine.run_until)(job_id, "awaiting_confirmation")
    return job_id


def run(engine, job_id, *statuses):
    return async_to_sync(engine.run_until)(job_id, *statuses)


# --- Authentication -------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("post", "/orchestrate"), ("get", "/orchestrate"), ("get", "/orchestrate/00000000-0000-0000-0000-000000000000"),
    ("post", "/orchestrate/00000000-0000-0000-0000-000000000000/confirm"),
    ("post", "/orchestrate/00000000-0000-0000-0000-000000000000/deny"),
    ("post", "/orchestrate/00000000-0000-0000-0000-000000000000/cancel"),
])
@pytest.mark.parametrize("token", [None, "ctx_not-a-real-token", "garbage"])
def test_it_requires_a_valid_token_everywhere(method, path, token):
    response = getattr(ApiClient(token), method)(path)
    assert response.status_code == 401
    assert response.json() == {"detail": "a valid API token is required"}


def test_a_revoked_token_stops_working(owner):
    token, raw = services.token_create(user=owner, name="cron")
    assert ApiClient(raw).get("/orchestrate").status_code == 200
    services.token_revoke(user=owner, token_id=token.pk)
    assert ApiClient(raw).get("/orchestrate").status_code == 401


def test_tokens_are_stored_hashed_and_printed_once_by_the_command(owner, capsys):
    call_command("create_api_token", "alice")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert raw.startswith("ctx_")
    stored = ApiToken.objects.get(user=owner)
    assert raw not in (stored.digest, stored.prefix) and len(stored.digest) == 64
    assert ApiClient(raw).get("/orchestrate").status_code == 200


# --- Submitting -----------------------------------------------------------------------------

def test_it_queues_a_task_and_stores_every_field(api, owner, default_persona):
    job_id = submit(api, "Summarise my week", tier=2, respond_with_final=False, include_long=False,
                    include_mid=True, include_short=False, user="alice", persona="assistant", chat_role="chat",
                    off_record=True)
    job = Job.objects.get(pk=job_id)
    assert job.user == owner and job.status == "queued" and job.persona.name == "assistant"
    assert job.options | {"roles": None, "history_messages": None} == {"roles": None, "history_messages": None,
                                                                      "tier": 2, "respond_with_final": False, "include_long": False, "include_mid": True,
                           "include_short": False, "chat_role": "chat", "off_record": True}


def test_a_submission_writes_its_session_job_and_first_event_once_each(api):
    submit(api)  # the token's first use is recorded; the next is not, within a minute
    with CaptureQueriesContext(connection) as queries:
        job_id = submit(api)
    writes = [query["sql"].split(" INTO ")[1].split()[0].strip('"`') for query in queries.captured_queries
              if query["sql"].startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == ["orchestrator_session", "orchestrator_job", "orchestrator_jobevent"]
    job = Job.objects.get(pk=job_id)
    assert job.last_seq == 1
    assert list(job.events.values_list("seq", "type", "data__status")) == [(1, "job.status", "queued")]


def test_respond_with_claude_is_accepted_as_the_original_name(api):
    job = Job.objects.get(pk=submit(api, respond_with_claude=False))
    assert job.options["respond_with_final"] is False


def test_naming_another_user_is_forbidden(api, outsider):
    response = api.post("/orchestrate", {"task": "hello", "user": "bob"})
    assert response.status_code == 403
    assert Job.objects.count() == 0


def test_an_unknown_persona_is_a_bad_request(api):
    response = api.post("/orchestrate", {"task": "hello", "persona": "nobody"})
    assert response.status_code == 400
    assert "persona" in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {},
    {"task": ""},
    {"task": "   "},
    {"task": 12},
    {"task": "x", "tier": 7},
    {"task": "x", "include_long": "perhaps"},
    {"task": "x", "chat_role": "r" * 65},
])
def test_invalid_fields_are_a_bad_request(api, body):
    response = api.post("/orchestrate", body)
    assert response.status_code == 400, response.content
    assert isinstance(response.json()["detail"], str)
    assert Job.objects.count() == 0


@pytest.mark.parametrize("raw", ['{"task": "x"', "not json", "[1, 2]", '"task"'])
def test_a_malformed_body_is_a_bad_request(api, raw):
    response = api.post("/orchestrate", raw=raw)
    assert response.status_code == 400
    assert "detail" in response.json()


def test_a_task_over_the_limit_is_too_large(api, settings):
    settings.CORTEX_MAX_TASK_CHARS = 100
    response = api.post("/orchestrate", {"task": "x" * 101})
    assert response.status_code == 413
    assert "limit is 100" in response.json()["detail"]
    assert api.post("/orchestrate", {"task": "x" * 100}).status_code == 202


def test_an_oversized_body_is_too_large(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    response = api.post("/orchestrate", {"task": "y" * 5000})
    assert response.status_code == 413
    assert Job.objects.count() == 0


def test_a_session_id_continues_that_session(api, engine):
    first = submit(api, "Calculate 2+3")
    run(engine, first, "complete")
    session_id = api.get(f"/orchestrate/{first}").json()["session_id"]
    second = submit(api, "Calculate 4*5", session_id=session_id)
    job = Job.objects.get(pk=second)
    assert str(job.session_id) == session_id
    assert [m["role"] for m in job.transcript] == ["user", "assistant", "user"]
    assert job.transcript[0]["content"] == "Calculate 2+3"


def test_another_users_session_is_not_found(api, outsider_api):
    session_id = Job.objects.get(pk=submit(api)).session_id
    response = outsider_api.post("/orchestrate", {"task": "hi", "session_id": str(session_id)})
    assert response.status_code == 404


# --- Reading --------------------------------------------------------------------------------

def test_a_job_has_the_original_fields(api, engine):
    job_id = submit(api, "What time is it?")
    run(engine, job_id, "complete")
    body = api.get(f"/orchestrate/{job_id}").json()
    assert set(body) == JOB_FIELDS
    assert body["status"] == "complete" and body["completed_at"]
    assert body["backend"] == "demo:demo" and "Demo" in body["backend_label"]
    assert body["tool_calls"][0]["name"] == "current_time"
    assert "current_time" in body["response"]
    assert (body["origin"], body["origin_detail"]) == ("api", None)


def test_the_outcome_tells_a_clean_completion_from_one_with_denied_calls(api, engine, awaiting):
    assert api.get(f"/orchestrate/{awaiting}").json()["outcome"] is None  # not finished yet
    api.post(f"/orchestrate/{awaiting}/deny")
    run(engine, awaiting, "complete")
    body = api.get(f"/orchestrate/{awaiting}").json()
    assert (body["status"], body["outcome"]) == ("complete", "complete_with_problems")
    clean = submit(api, "What time is it?")
    run(engine, clean, "complete")
    assert api.get(f"/orchestrate/{clean}").json()["outcome"] == "complete"
    assert {job["outcome"] for job in api.get("/orchestrate", status="complete").json()} == {
        "complete", "complete_with_problems"}


def test_the_list_is_newest_first_paginated_and_filtered(api, outsider_api):
    ids = [submit(api, f"task {n}") for n in range(5)]
    submit(outsider_api, "not yours")
    listed = api.get("/orchestrate").json()
    assert [job["job_id"] for job in listed] == ids[::-1]
    assert [job["job_id"] for job in api.get("/orchestrate", limit=2, offset=1).json()] == ids[::-1][1:3]
    Job.objects.filter(pk=ids[0]).update(status="error")
    assert [job["job_id"] for job in api.get("/orchestrate", status="error").json()] == [ids[0]]
    assert api.get("/orchestrate", status="sleeping").status_code == 400
    assert api.get("/orchestrate", limit=0).status_code == 400


def test_pending_confirmation_lists_the_gated_calls(api, awaiting):
    body = api.get(f"/orchestrate/{awaiting}").json()
    assert body["status"] == "awaiting_confirmation"
    [pending] = body["pending_confirmation"]["tools"]
    assert pending["name"] == "workspace_write" and pending["risk"] == "medium"
    assert pending["args"] == {"path": "notes/demo-note.txt", "content": "buy milk"}
    assert pending["id"] and body["pending_confirmation"]["message"]


# --- Isolation and methods ------------------------------------------------------------------

@pytest.mark.parametrize("method,suffix", [("get", ""), ("post", "/confirm"), ("post", "/deny"),
                                           ("post", "/cancel")])
def test_another_users_job_is_not_found_on_every_endpoint(api, outsider_api, awaiting, method, suffix):
    response = getattr(outsider_api, method)(f"/orchestrate/{awaiting}{suffix}")
    assert response.status_code == 404
    assert response.json()["detail"]
    assert Job.objects.get(pk=awaiting).status == "awaiting_confirmation"


def test_a_malformed_job_id_is_not_found(api):
    assert api.get("/orchestrate/not-a-uuid").status_code == 404


@pytest.mark.parametrize("method,path", [("put", "/orchestrate"), ("delete", "/orchestrate"),
                                         ("get", "/orchestrate/00000000-0000-0000-0000-000000000000/confirm"),
                                         ("put", "/orchestrate/00000000-0000-0000-0000-000000000000")])
def test_a_wrong_method_is_not_allowed(api, method, path):
    response = getattr(api, method)(path)
    assert response.status_code == 405
    assert "not allowed" in response.json()["detail"]


# --- Deciding -------------------------------------------------------------------------------

def test_confirm_with_no_body_runs_every_pending_call(api, engine, awaiting):
    response = api.post(f"/orchestrate/{awaiting}/confirm")
    assert response.status_code == 200 and response.json()["status"] == "running"
    job = run(engine, awaiting, "complete")
    assert "workspace_write" in job.response
    [call] = job.tool_calls.all()
    assert call.status == "succeeded" and call.decision == "approved" and call.decided_by.username == "alice"


def test_confirm_in_the_wrong_state_is_a_conflict(api, engine):
    job_id = submit(api)
    assert api.post(f"/orchestrate/{job_id}/confirm").status_code == 409
    run(engine, job_id, "complete")
    assert api.post(f"/orchestrate/{job_id}/confirm").status_code == 409
    assert api.post(f"/orchestrate/{job_id}/deny").status_code == 409


def test_confirm_one_call_by_id_with_edited_arguments(api, engine, awaiting, settings):
    call_id = api.get(f"/orchestrate/{awaiting}").json()["pending_confirmation"]["tools"][0]["id"]
    edited = {"path": "notes/edited.txt", "content": "buy oat milk"}
    response = api.post(f"/orchestrate/{awaiting}/confirm", {"tool_call_id": call_id, "args": edited})
    assert response.status_code == 200
    job = run(engine, awaiting, "complete")
    call = job.tool_calls.get()
    assert call.decision == "edited" and call.args == edited
    assert call.original_args == {"path": "notes/demo-note.txt", "content": "buy milk"}
    written = settings.CORTEX_WORKSPACE_ROOT / str(job.user_id) / "notes" / "edited.txt"
    assert written.read_text() == "buy oat milk"


@pytest.mark.parametrize("body,status", [
    ({"tool_call_id": "nope"}, 404),
    ({"args": {"path": "x"}}, 400),  # edited args need the call they belong to
    ({"remember": "forever"}, 400),
    ({"unexpected": 1}, 400),
])
def test_bad_confirmations_change_nothing(api, awaiting, body, status):
    assert api.post(f"/orchestrate/{awaiting}/confirm", body).status_code == status
    assert Job.objects.get(pk=awaiting).status == "awaiting_confirmation"


def test_edited_arguments_are_checked_against_the_schema(api, awaiting):
    call_id = api.get(f"/orchestrate/{awaiting}").json()["pending_confirmation"]["tools"][0]["id"]
    response = api.post(f"/orchestrate/{awaiting}/confirm", {"tool_call_id": call_id, "args": {"path": 5}})
    assert response.status_code == 400
    assert "invalid arguments" in response.json()["detail"]
    assert Job.objects.get(pk=awaiting).tool_calls.get().status == "awaiting"


def test_remember_job_approves_the_tool_for_the_rest_of_the_job(api, awaiting):
    assert api.post(f"/orchestrate/{awaiting}/confirm", {"remember": "job"}).status_code == 200
    assert Job.objects.get(pk=awaiting).approved_tools == ["workspace_write"]


def test_deny_with_a_reason_gives_the_call_a_result_and_the_job_goes_on(api, engine, awaiting):
    response = api.post(f"/orchestrate/{awaiting}/deny", {"reason": "not today"})
    assert response.status_code == 200 and response.json()["status"] == "running"
    job = run(engine, awaiting, "complete")
    call = job.tool_calls.get()
    assert call.status == "denied" and call.reason == "not today"
    assert call.result == "The person denied this tool call: not today"
    tool_messages = [m for m in job.transcript if m["role"] == "tool"]
    assert tool_messages == [{"role": "tool", "tool_call_id": call.call_id, "name": "workspace_write",
                              "content": call.result, "is_error": True}]
    assert "failed or was not allowed" in job.response


def test_cancel_closes_every_pending_call(api, awaiting):
    response = api.post(f"/orchestrate/{awaiting}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    job = Job.objects.get(pk=awaiting)
    assert job.status == "cancelled" and job.completed_at
    assert [c.status for c in job.tool_calls.all()] == ["cancelled"]
    assert api.post(f"/orchestrate/{awaiting}/cancel").status_code == 409


# --- Documentation --------------------------------------------------------------------------

def test_the_openapi_description_names_every_endpoint(api, client, owner):
    assert client.get("/api/docs").status_code == 302
    client.force_login(owner)
    spec = json.loads(client.get("/api/openapi.json").content)
    assert {"/orchestrate", "/orchestrate/{job_id}", "/orchestrate/{job_id}/confirm", "/orchestrate/{job_id}/deny",
            "/orchestrate/{job_id}/cancel"} <= set(spec["paths"])
    assert client.get("/api/docs").status_code == 200
