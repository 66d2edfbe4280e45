"""The htmx pages: signed-out visitors go to sign in, other users' objects are 404, wrong methods
405, every form needs its CSRF token; and each page does what it says, with and without htmx."""

from __future__ import annotations

import io
import re
from html import unescape

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.test import Client
from django.urls import reverse

from orchestrator import services
from orchestrator.engine import state
from orchestrator.providers.base import ModelResponse, ModelToolCall
from orchestrator.models import ApiToken, Job, JobStatus, Memory, ToolPolicy
from orchestrator.tools.registry import registry
from tests.pages import answered

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}
NO_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def awaiting_job(owner, engine, default_persona):
    """A job of alice's paused on a gated call: the demo model writes a note (medium risk asks)."""
    def make(task: str = "Write a note: buy milk") -> Job:
        job = services.job_submit(user=owner, task=task)
        return async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
    return make


@pytest.fixture
def objects(owner, awaiting_job):
    """One of each of alice's objects that has its own address."""
    job = awaiting_job()
    return {
        "job": job.pk,
        "call": job.tool_calls.get().pk,
        "session": job.session_id,
        "memory": services.memory_save(user=owner, content="Likes tea").pk,
        "token": services.token_create(user=owner, name="cron")[0].pk,
    }


def url_of(name: str, objects: dict) -> str:
    args = {
        "job-detail": ["job"], "job-cancel": ["job"], "call-approve": ["job", "call"], "call-deny": ["job", "call"],
        "call-edit": ["job", "call"], "session-detail": ["session"], "session-continue": ["session"],
        "memory-edit": ["memory"], "memory-delete": ["memory"], "token-revoke": ["token"],
    }.get(name, [])
    return reverse(name, args=[objects[key] for key in args])


PAGES = ["jobs", "job-detail", "confirmations", "sessions", "session-detail", "memories", "memory-edit",
         "settings", "settings-tools", "settings-tokens"]
POSTS = ["job-submit", "job-cancel", "call-approve", "call-deny", "call-edit", "session-continue", "memory-create",
         "memory-edit", "memory-delete", "settings-tools", "settings-tools-preview", "token-create", "token-revoke"]


# --- Who may see what ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAGES)
def test_a_signed_out_visitor_is_sent_to_sign_in(name, objects):
    url = url_of(name, objects)
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", POSTS)
def test_a_signed_out_visitor_cannot_post_anything(name, objects):
    response = Client().post(url_of(name, objects), {"task": "x", "content": "x"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert Job.objects.count() == 1 and Memory.objects.count() == 1


def test_signing_in_leads_to_the_jobs_page(owner):
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="username"' in page.content
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302 and response["Location"] == reverse("jobs")
    assert client.get(reverse("jobs")).status_code == 200


def test_a_wrong_password_is_refused_on_the_page(owner):
    response = Client().post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200 and b"alert-error" in response.content


@pytest.mark.parametrize("name", ["job-detail", "session-detail", "memory-edit"])
def test_it_hides_other_users_pages(name, objects, bob):
    assert bob.get(url_of(name, objects)).status_code == 404


@pytest.mark.parametrize("name", ["job-cancel", "call-approve", "call-deny", "call-edit", "session-continue",
                                  "memory-edit", "memory-delete", "token-revoke"])
def test_it_refuses_to_act_on_other_users_objects(name, objects, bob):
    response = bob.post(url_of(name, objects), {"task": "take over", "content": "mine now", "tier": "mid",
                                                "call-1-path": "x", "call-1-content": "y", "reason": "no"})
    assert response.status_code == 404
    job = Job.objects.get(pk=objects["job"])
    assert job.status == JobStatus.AWAITING_CONFIRMATION and job.tool_calls.get().decision == ""
    assert Memory.objects.get(pk=objects["memory"]).content == "Likes tea"
    assert ApiToken.objects.get(pk=objects["token"]).revoked_at is None


def test_an_unknown_job_is_404(alice):
    assert alice.get(reverse("job-detail", args=[NO_ID])).status_code == 404


# The page each form that posts to an address belongs to.
OWNING_PAGES = {"job-submit": "jobs", "job-cancel": "job-detail", "call-approve": "job-detail",
                "call-deny": "job-detail", "call-edit": "job-detail", "session-continue": "session-detail",
                "memory-create": "memories", "memory-delete": "memories", "settings-tools-preview": "settings-tools",
                "token-create": "settings-tokens", "token-revoke": "settings-tokens"}


@pytest.mark.parametrize("name", [name for name in POSTS if name not in ("settings-tools", "memory-edit")])
def test_a_get_on_a_post_only_address_shows_the_page_it_belongs_to(name, objects, alice):
    response = alice.get(url_of(name, objects))
    assert response.status_code == 303 and response["Location"] == url_of(OWNING_PAGES[name], objects)
    assert alice.get(response["Location"]).status_code == 200
    changed = alice.put(url_of(name, objects))
    assert changed.status_code == 405 and changed["Allow"] == "POST"
    job = Job.objects.get(pk=objects["job"])
    assert job.status == JobStatus.AWAITING_CONFIRMATION and job.tool_calls.get().decision == ""
    assert Memory.objects.count() == 1 and ApiToken.objects.get(pk=objects["token"]).revoked_at is None


def test_a_get_on_another_users_post_only_address_is_still_not_found(objects, bob):
    response = bob.get(url_of("call-approve", objects), follow=True)
    assert response.redirect_chain == [(url_of("job-detail", objects), 303)] and response.status_code == 404


@pytest.mark.parametrize("name", PAGES)
def test_pages_refuse_methods_they_do_not_take(name, objects, alice):
    url = url_of(name, objects)
    assert alice.delete(url).status_code == 405
    if name not in ("settings-tools", "memory-edit"):
        assert alice.post(url).status_code == 405


def test_signing_out_takes_a_post(alice):
    assert alice.get(reverse("logout")).status_code == 405
    assert alice.post(reverse("logout")).status_code == 302
    assert alice.get(reverse("jobs")).status_code == 302


@pytest.mark.parametrize("name", POSTS)
def test_every_form_needs_its_csrf_token(name, objects, owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(url_of(name, objects), {"task": "x", "content": "x", "tier": "mid", "name": "x"})
    assert response.status_code == 403
    assert Job.objects.count() == 1 and Job.objects.get().status == JobStatus.AWAITING_CONFIRMATION


def test_signing_in_and_out_need_a_csrf_token_too(owner):
    client = Client(enforce_csrf_checks=True)
    assert client.post(reverse("login"), {"username": "alice", "password": "alice-password-1"}).status_code == 403
    client.force_login(owner)
    assert client.post(reverse("logout")).status_code == 403


@pytest.mark.parametrize("name", PAGES)
def test_every_form_on_every_page_carries_a_csrf_token(name, objects, alice):
    html = alice.get(url_of(name, objects), follow=True).content.decode()
    forms = re.findall(r"<form\b[^>]*method=\"post\"[^>]*>.*?</form>", html, re.S)
    assert forms
    for form in forms:
        assert 'name="csrfmiddlewaretoken"' in form
    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"\w+\"\}'>", html)


# --- Layout -------------------------------------------------------------------------------------

def test_the_layout_counts_pending_confirmations_and_opens_the_user_stream(objects, alice):
    html = alice.get(reverse("jobs")).content.decode()
    assert re.search(r'id="nav-confirmations"[^>]*>1<', html)
    assert 'ws-connect="/ws/me/?pending=1"' in html
    assert "vendor/htmx.min.js" in html and "vendor/htmx-ext-ws.min.js" in html
    assert '"includeIndicatorStyles": false' in html


def test_pages_send_a_content_security_policy_with_a_nonce(alice):
    response = alice.get(reverse("jobs"))
    policy = response["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    assert f'nonce="{nonce}"' in response.content.decode()
    assert "style-src 'self'" in policy and "unsafe-inline" not in policy


# --- Jobs ---------------------------------------------------------------------------------------

def test_it_submits_a_task_and_opens_its_page(owner, alice, default_persona):
    response = alice.post(reverse("job-submit"), {
        "task": "Plan my week", "persona": "assistant", "off_record": "on", "tier": "2", "chat_role": "chat",
        "include_long": "on"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("job-detail", args=[job.pk])
    assert job.user == owner and job.task == "Plan my week" and job.persona == default_persona
    assert {key: job.options[key] for key in ("off_record", "respond_with_final", "tier", "include_long",
                                               "include_mid", "include_short", "chat_role")} == {
        "off_record": True, "respond_with_final": False, "tier": 2, "include_long": True, "include_mid": False,
        "include_short": False, "chat_role": "chat"}


def test_htmx_submit_sends_the_browser_to_the_job(alice):
    response = alice.post(reverse("job-submit"), {"task": "Hello", "chat_role": "chat"}, headers=HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("job-detail", args=[Job.objects.get().pk])


@pytest.mark.parametrize("headers,fragment", [({}, False), (HTMX, True)])
def test_an_empty_task_comes_back_with_a_message(alice, headers, fragment):
    response = alice.post(reverse("job-submit"), {"task": "   ", "chat_role": "chat"}, headers=headers)
    html = response.content.decode()
    assert answered(response) == 400 and "This field is required." in html
    assert html.lstrip().startswith('<form id="job-form"') is fragment
    assert not Job.objects.exists()


@pytest.mark.parametrize("headers,status", [({}, 400), (HTMX, 200)])
def test_only_an_htmx_swap_of_form_errors_is_answered_as_a_success(alice, headers, status):
    response = alice.post(reverse("job-submit"), {"task": "", "chat_role": "chat"}, headers=headers)
    assert (response.status_code, response.get("X-Cortex-Invalid")) == (status, "400" if status == 200 else None)


def test_the_api_keeps_its_error_statuses_even_for_an_htmx_request(owner):
    token, raw = services.token_create(user=owner, name="cron")
    response = Client().post("/orchestrate", data="{", content_type="application/json",
                             headers={**HTMX, "Authorization": f"Bearer {raw}"})
    assert response.status_code == 400 and "X-Cortex-Invalid" not in response
    assert response["Content-Type"].startswith("application/json")


def test_a_service_refusal_shows_on_the_form(alice, settings):
    settings.CORTEX_MAX_TASK_CHARS = 10
    response = alice.post(reverse("job-submit"), {"task": "far more than ten characters", "chat_role": "chat"})
    assert response.status_code == 400 and "the limit is 10" in response.content.decode()


def test_it_continues_the_chosen_session(owner, alice):
    first = services.job_submit(user=owner, task="Remember the number 7")
    alice.post(reverse("job-submit"), {"task": "What number?", "session": str(first.session_id), "chat_role": "chat"})
    assert Job.objects.get(task="What number?").session_id == first.session_id


def test_the_list_shows_only_my_jobs_newest_first_with_filters(owner, outsider, alice, awaiting_job):
    waiting = awaiting_job()
    services.job_submit(user=owner, task="Queued one")
    services.job_submit(user=outsider, task="Bob's secret")
    html = alice.get(reverse("jobs")).content.decode()
    listing = listing_of(alice.get(reverse("jobs")))
    assert listing.index("Queued one") < listing.index("Write a note: buy milk")
    assert "secret" not in html
    assert f'id="job-{waiting.pk}-status"' in html
    assert re.search(r'ws-connect="/ws/me/\?list=&amp;page=1&amp;listed=[0-9a-f]{16}"', html)

    filtered = listing_of(alice.get(reverse("jobs"), {"status": "awaiting_confirmation"}))
    assert "Write a note" in filtered and "Queued one" not in filtered
    assert re.search(r'filter-current"[^>]*>Waiting for you <span class="filter-count">1<', filtered)


def test_htmx_filters_swap_only_the_list(owner, alice):
    services.job_submit(user=owner, task="Queued one")
    response = alice.get(reverse("jobs"), {"status": "queued"}, headers={**HTMX, "HX-Target": "job-list"})
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="job-list"') and "<html" not in html and "Queued one" in html


def listing_of(response) -> str:
    html = response.content.decode()
    return html[html.index('id="job-list"'):]


def test_the_list_pages_through_many_jobs(owner, alice):
    for number in range(23):
        services.job_submit(user=owner, task=f"Task number {number:02d}")
    first = listing_of(alice.get(reverse("jobs")))
    second = listing_of(alice.get(reverse("jobs"), {"page": 2}))
    assert "Task number 22" in first and "Task number 03" in first and "Task number 02" not in first
    assert "Task number 02" in second and "Task number 00" in second and "Page 2 of 2" in second


def test_the_job_page_renders_its_history_and_streams_after_it(alice, awaiting_job):
    job = awaiting_job()
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert re.findall(r'<li id="event-(\d+)"', html) == [str(seq) for seq in range(1, job.last_seq + 1)]
    assert f'<span id="job-cursor" data-after="{job.last_seq}" hidden>' in html
    assert f'ws-connect="/ws/jobs/{job.pk}/html/?after={job.last_seq}" data-stream-cursor="job-cursor"' in html
    assert 'id="call-' in html and "workspace_write" in html and "Medium risk" in html
    assert "Cancel job" in html


def test_a_finished_job_opens_no_stream(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    services.job_cancel(user=owner, job_id=job.pk)
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert "ws-connect=\"/ws/jobs/" not in html and "Cancel job" not in html and "Cancelled by alice" in html


def test_the_answer_is_markdown_without_scripts(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETE, response=(
        "# Title\n\n**bold** <script>alert('x')</script> [click](javascript:alert(1)) "
        '<a href="https://example.org" onclick="steal()" hx-get="/evil">ok</a> <img src=x onerror=alert(2)>'))
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    answer = html[html.index('id="job-answer"'):html.index('id="timeline-title"')]
    assert "<h1>Title</h1>" in answer and "<strong>bold</strong>" in answer
    assert "<script" not in answer and "alert('x')" not in answer
    # A `javascript:` link is not made a link at all: what the model wrote stays as text.
    assert not re.search(r"""=\s*["']?javascript:""", answer) and "[click](javascript:alert(1))" in answer
    assert "onclick" not in answer and "onerror" not in answer
    assert "hx-get" not in answer and "<img" not in answer
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">ok</a>' in answer


def test_an_answer_is_commonmark_with_lists_code_and_tables(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETE, response=(
        "The model said:\n- one\n- two\n\n```python\nif a < b:\n    pass\n```\n\n| name | size |\n|---|--:|\n"
        "| a | 1 |\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)> [go](javascript:alert(3))"))
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    answer = html[html.index('id="job-answer"'):html.index('id="timeline-title"')]
    assert "<p>The model said:</p>\n<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in answer
    assert "<pre><code>if a &lt; b:\n    pass\n</code></pre>" in answer
    assert "<table>" in answer and "<th>name</th>" in answer and "<td>1</td>" in answer
    assert "<script" not in answer and "alert(1)" not in answer and "<img" not in answer and "onerror" not in answer
    assert 'href="javascript:' not in answer


@pytest.fixture
def job_with_a_denied_call(owner, engine, awaiting_job):
    job = awaiting_job()
    services.job_deny(user=owner, job_id=job.pk, reason="no")
    return async_to_sync(engine.run_until)(job.pk, "complete")


def test_a_job_with_a_denied_call_does_not_show_a_clean_complete(alice, job_with_a_denied_call):
    job = job_with_a_denied_call
    badge = (f'<span id="job-{job.pk}-status" class="badge status status-complete_with_problems">'
             "Complete · 1 call denied or failed</span>")
    assert badge in alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert badge in listing_of(alice.get(reverse("jobs")))


def test_the_list_filters_by_outcome_with_counts(owner, alice, engine, job_with_a_denied_call):
    clean = services.job_submit(user=owner, task="What time is it?")
    async_to_sync(engine.run_until)(clean.pk, "complete")
    services.job_cancel(user=owner, job_id=services.job_submit(user=owner, task="Never mind").pk)
    listing = listing_of(alice.get(reverse("jobs")))
    counts = dict(re.findall(r'>([^<>]+) <span class="filter-count">(\d+)<', listing))
    assert counts == {"All": "3", "Waiting for you": "0", "Running": "0", "Queued": "0", "Complete": "1",
                      "Calls denied or failed": "1", "Error": "0", "Cancelled": "1"}
    assert 'href="?status=complete_with_problems"' in listing  # one question mark: the filter works
    troubled = listing_of(alice.get(reverse("jobs"), {"status": "complete_with_problems"}))
    assert "Write a note: buy milk" in troubled and "What time is it?" not in troubled
    complete = listing_of(alice.get(reverse("jobs"), {"status": "complete"}))
    assert "What time is it?" in complete and "Write a note: buy milk" not in complete


def test_the_list_reads_its_badges_in_a_fixed_number_of_queries(owner, alice, engine, job_with_a_denied_call):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice.get(reverse("jobs")).status_code == 200
        return len(captured)

    few = queries()
    for number in range(6):
        job = services.job_submit(user=owner, task=f"Write a note: item {number}")
        async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation")
        services.job_deny(user=owner, job_id=job.pk)
    async_to_sync(engine.run_until)(job.pk, "complete")
    assert listing_of(alice.get(reverse("jobs"))).count("status-complete_with_problems") == 7
    assert queries() == few


def test_the_model_is_named_the_same_while_the_job_runs_and_after(owner, alice, engine):
    job = services.job_submit(user=owner, task="What time is it?")
    meta = re.compile(r"<dt>Model</dt><dd>([^<]*)</dd>")
    assert meta.findall(alice.get(reverse("job-detail", args=[job.pk])).content.decode()) == [
        "Demo model (offline, scripted)"]
    async_to_sync(engine.run_until)(job.pk, "complete")
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert meta.findall(html) == ["Demo model (offline, scripted)"] and "demo:demo" not in html


def test_without_javascript_an_unfinished_job_says_it_does_not_update_by_itself(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    note = re.search(r"<noscript>(.*?)</noscript>", html, re.S).group(1)
    assert "does not update by itself" in note and f'href="{reverse("job-detail", args=[job.pk])}"' in note
    assert 'class="stream-state js-only"' in html  # "Connecting…" only where a script connects
    services.job_cancel(user=owner, job_id=job.pk)
    assert "<noscript>" not in alice.get(reverse("job-detail", args=[job.pk])).content.decode()


def test_an_answer_cut_off_shows_why_above_what_was_written(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.ERROR, response="Half of the answ",
                                         error="the chat model was cut off at the output limit of 20 tokens")
    html = alice.get(reverse("job-detail", args=[job.pk])).content.decode()
    answer = html[html.index('id="job-answer"'):html.index('id="timeline-title"')]
    assert answer.index("cut off at the output limit of 20 tokens") < answer.index("Half of the answ")


def test_it_cancels_an_active_job_once(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    response = alice.post(reverse("job-cancel", args=[job.pk]))
    assert response.status_code == 302
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    again = alice.post(reverse("job-cancel", args=[job.pk]), headers=HTMX)
    assert answered(again) == 409 and "already cancelled" in again.content.decode()


def test_htmx_cancel_redraws_the_actions(owner, alice):
    job = services.job_submit(user=owner, task="Hello")
    response = alice.post(reverse("job-cancel", args=[job.pk]), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<div id="job-actions"')
    assert "Cancel job" not in html


# --- Confirmations ------------------------------------------------------------------------------

def shown(call, **fields) -> dict:
    """A decision form as the card sends it: with the digest of the arguments it showed."""
    return {"args_digest": call.args_digest, **fields}


def test_it_approves_a_call(owner, alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    response = alice.post(reverse("call-approve", args=[job.pk, call.pk]), shown(call, next=reverse("confirmations")))
    assert response.status_code == 302 and response["Location"] == reverse("confirmations")
    call.refresh_from_db()
    assert call.decision == "approved" and call.decided_by == owner and not call.remember
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_it_never_redirects_to_another_site(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    response = alice.post(reverse("call-approve", args=[job.pk, call.pk]), shown(call, next="https://evil.example/"))
    assert response["Location"] == reverse("job-detail", args=[job.pk])


def test_htmx_approve_for_the_rest_of_the_job_answers_with_the_decided_card(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    response = alice.post(reverse("call-approve", args=[job.pk, call.pk]), shown(call, remember="job"), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith(f'<article id="call-{call.pk}"')
    assert "approved for the rest of this job" in html
    assert Job.objects.get(pk=job.pk).approved_tools == ["workspace_write"]


def test_it_denies_with_a_reason(owner, alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    response = alice.post(reverse("call-deny", args=[job.pk, call.pk]), shown(call, reason="not today"), headers=HTMX)
    assert response.status_code == 200 and "“not today”" in response.content.decode()
    call.refresh_from_db()
    assert call.decision == "denied" and call.reason == "not today" and call.decided_by == owner


def test_edited_arguments_are_checked_against_the_tool_schema(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    prefix = f"call-{call.pk}"
    bad = alice.post(reverse("call-edit", args=[job.pk, call.pk]),
                     shown(call, **{f"{prefix}-path": "", f"{prefix}-content": "oat milk"}), headers=HTMX)
    assert answered(bad) == 400
    assert "is required" in bad.content.decode() or "path" in bad.content.decode()
    schema_bad = alice.post(reverse("call-edit", args=[job.pk, call.pk]),
                            shown(call, **{f"{prefix}-path": "x" * 1100, f"{prefix}-content": "oat milk"}),
                            headers=HTMX)
    assert answered(schema_bad) == 400 and "invalid arguments for workspace_write" in schema_bad.content.decode()
    call.refresh_from_db()
    assert call.status == "awaiting" and call.decision == ""

    good = alice.post(reverse("call-edit", args=[job.pk, call.pk]),
                      shown(call, **{f"{prefix}-path": "notes/oat.txt", f"{prefix}-content": "oat milk"}),
                      headers=HTMX)
    assert good.status_code == 200 and "approved with your arguments" in good.content.decode()
    call.refresh_from_db()
    assert call.decision == "edited" and call.args == {"path": "notes/oat.txt", "content": "oat milk"}
    assert call.original_args == {"path": "notes/demo-note.txt", "content": "buy milk"}


def test_a_bad_edit_without_javascript_shows_the_job_page_with_the_error(alice, awaiting_job):
    job = awaiting_job()
    call = job.tool_calls.get()
    response = alice.post(reverse("call-edit", args=[job.pk, call.pk]),
                          shown(call, **{f"call-{call.pk}-path": "y" * 1100, f"call-{call.pk}-content": "z"}))
    html = response.content.decode()
    assert response.status_code == 400 and "<html" in html and "invalid arguments for workspace_write" in html
    assert '<details class="edit-args" open>' in html


@pytest.mark.parametrize("second", ["call-approve", "call-deny"])
def test_a_second_decision_gets_a_clear_message_not_an_error_page(alice, awaiting_job, second):
    job = awaiting_job()
    call = job.tool_calls.get()
    assert alice.post(reverse("call-approve", args=[job.pk, call.pk]), shown(call)).status_code == 302

    fragment = alice.post(reverse(second, args=[job.pk, call.pk]), shown(call), headers=HTMX)
    assert answered(fragment) == 409
    assert "This call was already approved by alice; nothing was changed." in fragment.content.decode()

    page = alice.post(reverse(second, args=[job.pk, call.pk]), shown(call), follow=True)
    assert page.status_code == 200
    assert "This call was already approved by alice; nothing was changed." in page.content.decode()
    call.refresh_from_db()
    assert call.decision == "approved"


@pytest.fixture
def bobs_waiting_call(outsider, engine, default_persona):
    """A call of bob's waiting for his decision: no one else may see it."""
    job = services.job_submit(user=outsider, task="Write a note: bob's secret plans")
    return async_to_sync(engine.run_until)(job.pk, "awaiting_confirmation").tool_calls.get()


def counter_of(html: str) -> str:
    return re.search(r'<span id="nav-confirmations"[^>]*>(\d+)</span>', html).group(1)


def test_the_inbox_lists_my_pending_calls_across_jobs(alice, awaiting_job, bobs_waiting_call):
    first, second = awaiting_job("Write a note: one"), awaiting_job("Write a note: two")
    html = alice.get(reverse("confirmations")).content.decode()
    assert "Write a note: one" in html and "Write a note: two" in html
    pks = sorted(job.tool_calls.get().pk for job in (first, second))
    assert re.search(r"inbox=([\d,]*)", html).group(1) == ",".join(map(str, pks))
    assert html.count('class="confirm-job"') == 2


def test_the_inbox_hides_other_users_waiting_calls(alice, bobs_waiting_call):
    html = alice.get(reverse("confirmations")).content.decode()
    assert "Nothing waits for you" in html
    assert "secret plans" not in html and str(bobs_waiting_call.job_id) not in html
    assert re.search(r"inbox=([\d,]*)", html).group(1) == ""


def test_the_navigation_counter_counts_only_my_waiting_calls(alice, awaiting_job, bobs_waiting_call):
    awaiting_job()
    assert counter_of(alice.get(reverse("jobs")).content.decode()) == "1"
    assert counter_of(alice.get(reverse("confirmations")).content.decode()) == "1"


def test_an_empty_inbox_says_so(alice):
    assert "Nothing waits for you" in alice.get(reverse("confirmations")).content.decode()


# --- Sessions -----------------------------------------------------------------------------------

def test_sessions_show_their_turns_as_a_conversation(owner, outsider, alice, engine, default_persona):
    job = services.job_submit(user=owner, task="What time is it?")
    async_to_sync(engine.run_until)(job.pk, "complete")
    secret = services.job_submit(user=owner, task="Calculate 6*7", session_id=str(job.session_id),
                                 options=services.JobOptions(off_record=True))
    async_to_sync(engine.run_until)(secret.pk, "complete")
    services.job_submit(user=outsider, task="Bob's own conversation")

    listing = alice.get(reverse("sessions")).content.decode()
    assert "What time is it?" in listing and "4 messages" in listing and "Bob" not in listing

    html = alice.get(reverse("session-detail", args=[job.session_id])).content.decode()
    assert html.index("What time is it?") < html.index("Calculate 6*7")
    assert html.count("bubble-off-record") == 2 and "Off the record" in html


def test_a_session_continues_from_its_page(owner, alice):
    first = services.job_submit(user=owner, task="Start")
    response = alice.post(reverse("session-continue", args=[first.session_id]), {"task": "Go on", "chat_role": "chat"})
    job = Job.objects.get(task="Go on")
    # Continuing opens the conversation, at the new turn, not the job.
    assert response.status_code == 302
    assert response["Location"] == reverse("session-detail", args=[first.session_id])
    assert job.session_id == first.session_id

    empty = alice.post(reverse("session-continue", args=[first.session_id]), {"task": "", "chat_role": "chat"},
                       headers=HTMX)
    assert answered(empty) == 400 and empty.content.decode().lstrip().startswith('<form id="continue-form"')


# --- Memories -----------------------------------------------------------------------------------

def test_memories_are_listed_by_tier(owner, outsider, alice):
    services.memory_save(user=owner, content="Lives in Lyon", tier="long")
    services.memory_save(user=owner, content="Writing a thesis", tier="mid")
    services.memory_save(user=outsider, content="Bob's memory", tier="long")
    html = alice.get(reverse("memories")).content.decode()
    assert html.index('id="tier-long-title"') < html.index("Lives in Lyon") < html.index(
        'id="tier-mid-title"') < html.index("Writing a thesis") < html.index('id="tier-short-title"')
    assert "Bob" not in html
    only_long = alice.get(reverse("memories"), {"tier": "long"}).content.decode()
    assert "Lives in Lyon" in only_long and "Writing a thesis" not in only_long


def test_a_memory_is_added_edited_and_deleted(owner, alice):
    response = alice.post(reverse("memory-create"), {"content": "Prefers tea", "tier": "short"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and 'id="memory-form"' in html and 'hx-swap-oob="true"' in html
    memory = Memory.objects.get(user=owner)
    assert memory.content == "Prefers tea" and memory.tier == "short"

    form = alice.get(reverse("memory-edit", args=[memory.pk]), headers=HTMX).content.decode()
    assert form.lstrip().startswith(f'<li id="memory-{memory.pk}"') and 'name="edit-content"' in form
    edited = alice.post(reverse("memory-edit", args=[memory.pk]), {"edit-content": "Prefers coffee",
                                                                   "edit-tier": "long"}, headers=HTMX)
    assert edited.status_code == 200 and edited["HX-Retarget"] == "#memory-board"
    memory.refresh_from_db()
    assert memory.content == "Prefers coffee" and memory.tier == "long"

    assert alice.post(reverse("memory-delete", args=[memory.pk])).status_code == 302
    assert not Memory.objects.exists()


def test_an_empty_memory_is_refused(alice):
    response = alice.post(reverse("memory-create"), {"content": "", "tier": "mid"})
    assert response.status_code == 400 and "This field is required." in response.content.decode()
    assert not Memory.objects.exists()


# --- Settings: tools ----------------------------------------------------------------------------

def test_the_tools_page_shows_every_tool_with_its_effective_policy(alice):
    html = alice.get(reverse("settings-tools")).content.decode()
    for tool in registry:
        assert f'id="effective-{tool.name}"' in html
    assert re.search(r'id="effective-workspace_write"[^>]*>\s*<span class="effective-summary">Offered, asks first',
                     html)
    assert re.search(r'id="effective-calculator"[^>]*>\s*<span class="effective-summary">Offered, runs', html)
    assert "Default (asks)" in html and "Force include" in html and "Never" in html


def effective_column(html: str) -> dict[str, str]:
    """Each tool's effective cell as a person reads it: the summary, then why."""
    cells = re.findall(r'<span id="effective-(\w+)"[^>]*>(.*?</span>)\s*</span>', html, re.S)
    return {name: " / ".join(unescape(part.strip()) for part in re.findall(r">([^<]+)<", cell) if part.strip())
            for name, cell in cells}


def test_the_effective_column_shows_the_decision_the_engine_makes(owner, alice):
    call_command("models", "assign", "orchestrator", "default", "--user", owner.username,
                 "--tools", "calculator,current_time,workspace_write,memory_delete", stdout=io.StringIO())
    services.policy_update(user=owner, max_risk="low", overrides={"current_time": "exclude"},
                           confirmations={"memory_save": "run", "calculator": "ask"})
    html = alice.get(reverse("settings-tools")).content.decode()
    shown = effective_column(html)
    assert shown["calculator"] == "Offered, asks first / Set to ask"
    assert shown["current_time"] == "Not offered (forced out)"
    assert shown["workspace_write"] == "Not offered (medium risk above low)"
    assert shown["memory_save"] == "Not offered (not on the orchestrator role's tool list)"
    assert "Your orchestrator role offers only" in html

    # The engine, for a job of this user: it offers exactly the tools shown as offered, and gives a
    # call to each tool the verdict and the reason the page shows.
    job = services.job_submit(user=owner, task="Use every tool")
    assert state.jobs_claim(owner="page-check", limit=1) == [str(job.pk)]
    offer = state.next_action(owner="page-check", job_id=str(job.pk))
    assert [spec["name"] for spec in offer.tools] == [name for name in shown if shown[name].startswith("Offered")]
    arguments = {"calculator": '{"expression": "1+1"}'}
    response = ModelResponse(text="", tool_calls=[
        ModelToolCall(id=f"c{n}", name=tool.name, arguments=arguments.get(tool.name, "{}"))
        for n, tool in enumerate(registry)])
    state.record_turn_and_continue(owner="page-check", job_id=str(job.pk), action=offer, response=response,
                                   backend="openai:test", backend_label="test")
    for call in job.tool_calls.all():
        summary = shown[call.name]
        if summary.startswith("Not offered"):
            assert (call.verdict, call.status) == ("refuse", "refused")
            assert call.verdict_reason.startswith(f"tool {call.name} is not allowed (")
            assert summary == "Not offered (" + call.verdict_reason.removeprefix(f"tool {call.name} is not allowed (")
        else:
            assert (call.verdict, call.status, summary) == ("ask", "awaiting", "Offered, asks first / Set to ask")
            assert call.verdict_reason == "set to ask"


def policy_form(max_risk: str = "high", **changes: str) -> dict[str, str]:
    data = {"max_risk": max_risk}
    for tool in registry:
        data[f"override_{tool.name}"] = "default"
        data[f"confirm_{tool.name}"] = "default"
    data.update(changes)
    return data


def test_the_preview_shows_the_effect_before_saving(owner, alice):
    response = alice.post(reverse("settings-tools-preview"),
                          policy_form("low", override_http_get="include", confirm_calculator="ask"), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert html.count('hx-swap-oob="true"') == len(registry) + 1
    assert re.search(r'id="effective-workspace_write"[^>]*>\s*<span class="effective-summary">Not offered', html)
    assert re.search(r'id="effective-http_get"[^>]*>\s*<span class="effective-summary">Offered, asks first', html)
    assert re.search(r'id="effective-calculator"[^>]*>\s*<span class="effective-summary">Offered, asks first', html)
    assert "not saved yet" in html and "data-unsaved" in html  # leaving the page asks first
    assert not ToolPolicy.objects.filter(user=owner).exists()
    assert "data-unsaved" not in alice.get(reverse("settings-tools")).content.decode()


def test_the_preview_keeps_to_the_role_allow_list(owner, alice):
    services.role_assign(by=None, owner=owner, role="orchestrator", profile_id=None, tools=["calculator"])
    response = alice.post(reverse("settings-tools-preview"),
                          policy_form(override_memory_save="include", confirm_memory_save="run"), headers=HTMX)
    shown = effective_column(response.content.decode())
    assert shown["memory_save"] == "Not offered (not on the orchestrator role's tool list)"
    assert shown["calculator"] == "Offered, runs / Low risk runs by default"


def test_the_preview_works_without_javascript(alice):
    response = alice.post(reverse("settings-tools-preview"), policy_form("low"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    assert re.search(r'id="effective-workspace_write"[^>]*>\s*<span class="effective-summary">Not offered', html)
    assert re.search(r'<input type="radio" name="max_risk" value="low"[^>]*checked', html)


def test_saving_the_tool_settings_stores_only_what_differs(owner, alice):
    response = alice.post(reverse("settings-tools"), policy_form("medium", override_workspace_delete="include",
                                                                 confirm_current_time="never"))
    assert response.status_code == 302 and response["Location"] == reverse("settings-tools")
    policy = ToolPolicy.objects.get(user=owner)
    assert policy.max_risk == "medium"
    assert policy.overrides == {"workspace_delete": "include"}
    assert policy.confirmations == {"current_time": "never"}
    html = alice.get(reverse("settings-tools")).content.decode()
    assert "Tool settings saved." in html
    assert re.search(r'<option value="include" selected>Force include</option>', html)


def test_a_bad_tool_setting_is_refused(owner, alice):
    response = alice.post(reverse("settings-tools"), policy_form("extreme"))
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert not ToolPolicy.objects.exists()


# --- Settings: API tokens -----------------------------------------------------------------------

def test_a_token_is_shown_once_and_can_be_revoked(owner, alice):
    response = alice.post(reverse("token-create"), {"name": "nightly cron"}, headers=HTMX)
    html = response.content.decode()
    raw = re.search(r'id="new-token">(ctx_[\w-]+)<', html).group(1)
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(user=owner)
    listing = alice.get(reverse("settings-tokens")).content.decode()
    assert raw not in listing and f"{token.prefix}…" in listing and "never" in listing
    assert token.name == "nightly cron" and services.token_authenticate(raw=raw) == owner

    alice.post(reverse("token-revoke", args=[token.pk]))
    assert services.token_authenticate(raw=raw) is None
    assert "Revoked" in alice.get(reverse("settings-tokens")).content.decode()


def test_a_token_without_javascript_is_shown_on_the_page(alice):
    response = alice.post(reverse("token-create"), {"name": ""})
    assert response.status_code == 200 and "<html" in response.content.decode()
    assert "will not be shown again" in response.content.decode()


def test_settings_lead_to_the_tools(alice):
    assert alice.get(reverse("settings"))["Location"] == reverse("settings-tools")

