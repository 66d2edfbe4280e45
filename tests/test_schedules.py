"""Schedules: due times in a time zone, exactly one firing per due time, one late firing after
downtime, run now, and the pages, API and commands that manage them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from orchestrator import services as core_services
from orchestrator.models import Job
from orchestrator.triggers import cron, services
from orchestrator.triggers.models import Schedule, ScheduleRun

pytestmark = pytest.mark.django_db


class Clock:
    """The schedules' clock (CORTEX_CLOCK_FILE), set and moved on by the test."""

    def __init__(self, path) -> None:
        self.path = path

    def set(self, moment: datetime) -> None:
        self.path.write_text(moment.isoformat())

    @property
    def now(self) -> datetime:
        return datetime.fromisoformat(self.path.read_text())

    def advance(self, **delta: float) -> datetime:
        self.set(self.now + timedelta(**delta))
        return self.now


@pytest.fixture
def clock(settings, tmp_path) -> Clock:
    settings.CORTEX_CLOCK_FILE = str(tmp_path / "now")
    clock = Clock(tmp_path / "now")
    clock.set(datetime(2026, 3, 2, 8, 59, 30, tzinfo=UTC))  # a Monday
    return clock


def every_minute(user, **fields) -> Schedule:
    return services.schedule_save(user=user, name=fields.pop("name", "Minutely"), cron_expression="* * * * *",
                                  time_zone=fields.pop("time_zone", "UTC"), task=fields.pop("task", "Report {time}"),
                                  **fields)


def fire(owner: str = "executor-a") -> list[ScheduleRun]:
    return services.schedules_fire_due(owner=owner)


# --- Due times, pure --------------------------------------------------------------------------

def test_the_next_times_are_in_the_schedules_time_zone_across_a_change_of_clocks():
    # Berlin moves its clocks forward on 29 March 2026: 9:00 stays 9:00 local, an hour less in UTC.
    times = cron.next_times("0 9 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in times] == ["2026-03-29T09:00:00+02:00", "2026-03-30T09:00:00+02:00"]
    assert times[0].astimezone(UTC).hour == 7


def test_after_downtime_one_firing_stands_for_every_missed_time():
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    firing = cron.due("* * * * *", "UTC", start, start + timedelta(minutes=2, seconds=30))
    assert (firing.at, firing.missed, firing.following) == (start + timedelta(minutes=2), 3,
                                                            start + timedelta(minutes=3))
    assert cron.due("* * * * *", "UTC", start, start - timedelta(seconds=1)) is None


def test_the_task_gets_the_due_date_time_and_weekday_and_keeps_other_braces():
    when = datetime(2026, 3, 2, 9, 5, tzinfo=UTC)
    assert cron.task_for("{weekday} {date} {time}: sum {x}", when) == "Monday 2026-03-02 09:05: sum {x}"


@pytest.mark.parametrize(("expression", "zone"), [("every day", "UTC"), ("* * * *", "UTC"), ("61 * * * *", "UTC"),
                                                  ("0 9 * * *", "Mars/Olympus"), ("0 9 * * * *", "UTC"),
                                                  ("0 0 30 2 *", "UTC")])
def test_a_bad_expression_or_time_zone_is_refused_by_name(owner, expression, zone):
    with pytest.raises(core_services.Invalid):
        services.schedule_save(user=owner, name="x", cron_expression=expression, time_zone=zone, task="t")
    assert not Schedule.objects.exists()


# --- Firing -------------------------------------------------------------------------------------

def test_a_due_schedule_fires_once_per_due_time_however_often_executors_look(owner, clock):
    schedule = every_minute(owner, max_risk="low")
    assert schedule.next_run_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert fire() == []  # not due yet
    clock.set(datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC))
    runs = fire("executor-a") + fire("executor-b") + fire("executor-a")
    assert len(runs) == 1
    run = runs[0]
    assert (run.due_at, run.late, run.missed, run.fired_by) == (schedule.next_run_at, False, 1, "executor-a")
    job = run.job
    assert job.task == "Report 09:00"
    assert (job.origin, job.origin_max_risk) == ("schedule", "low")
    assert job.origin_detail["schedule"] == schedule.pk and job.origin_detail["late"] is False
    clock.set(datetime(2026, 3, 2, 9, 1, 1, tzinfo=UTC))
    assert len(fire("executor-b") + fire("executor-a")) == 1
    assert list(ScheduleRun.objects.order_by("due_at").values_list("due_at__minute", flat=True)) == [0, 1]
    assert Job.objects.filter(origin="schedule").count() == 2


def test_a_due_time_that_has_a_row_already_is_not_fired_again(owner, clock):
    schedule = every_minute(owner)
    ScheduleRun.objects.create(schedule=schedule, due_at=schedule.next_run_at, fired_at=schedule.next_run_at)
    clock.set(datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC))
    assert fire() == []
    assert ScheduleRun.objects.count() == 1 and not Job.objects.exists()
    assert Schedule.objects.get().next_run_at == datetime(2026, 3, 2, 9, 1, tzinfo=UTC)


def test_after_three_minutes_without_executors_it_fires_once_and_the_job_says_late(owner, clock):
    every_minute(owner)
    clock.set(datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC))
    assert len(fire()) == 1
    clock.set(datetime(2026, 3, 2, 9, 3, 20, tzinfo=UTC))  # 9:01, 9:02 and 9:03 passed unfired
    runs = fire() + fire()
    assert len(runs) == 1
    assert (runs[0].due_at.minute, runs[0].late, runs[0].missed) == (3, True, 3)
    assert runs[0].job.origin_detail["late"] is True and runs[0].job.origin_detail["missed"] == 3
    assert Schedule.objects.get().next_run_at == datetime(2026, 3, 2, 9, 4, tzinfo=UTC)


def test_a_single_due_time_fired_long_after_is_late_too(owner, clock):
    services.schedule_save(user=owner, name="Daily", cron_expression="0 9 * * *", time_zone="UTC", task="t")
    clock.set(datetime(2026, 3, 2, 11, 0, tzinfo=UTC))
    (run,) = fire()
    assert (run.late, run.missed) == (True, 1)


def test_a_disabled_schedule_does_not_fire_and_enabling_it_starts_from_now(owner, clock):
    schedule = every_minute(owner, enabled=False)
    clock.set(datetime(2026, 3, 2, 9, 10, tzinfo=UTC))
    assert fire() == []
    services.schedule_set_enabled(user=owner, schedule_id=schedule.pk, enabled=True)
    assert Schedule.objects.get().next_run_at == datetime(2026, 3, 2, 9, 11, tzinfo=UTC)
    assert fire() == []  # nothing for the minutes it was off


def test_a_firing_that_cannot_start_a_job_is_recorded_and_the_schedule_goes_on(owner, clock):
    core_services.persona_save(owner=owner, name="reporter", prompt="You report.")
    schedule = every_minute(owner, options={"persona": "reporter"})
    core_services.persona_delete(owner=owner, persona_id=owner.personas.get().pk)
    clock.set(datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC))
    (run,) = fire()
    assert run.job is None and "unknown persona 'reporter'" in run.error
    assert Schedule.objects.get(pk=schedule.pk).next_run_at == datetime(2026, 3, 2, 9, 1, tzinfo=UTC)


def test_run_now_fires_once_at_once_and_leaves_the_times_as_they_were(owner, clock):
    schedule = every_minute(owner, task="On {weekday}")
    run = services.schedule_run_now(user=owner, schedule_id=schedule.pk)
    assert run.manual and run.job.task == "On Monday" and run.job.origin == "schedule"
    assert Schedule.objects.get().next_run_at == schedule.next_run_at


def test_the_job_options_go_with_every_firing(owner, clock):
    core_services.persona_save(owner=owner, name="terse", prompt="Be terse.")
    session = core_services.job_submit(user=owner, task="Start a conversation").session
    schedule = every_minute(owner, options={"persona": "terse", "tier": 1, "session_id": str(session.pk),
                                            "respond_with_final": False, "chat_role": "chat"})
    job = services.schedule_run_now(user=owner, schedule_id=schedule.pk).job
    assert (job.persona.name, job.session_id, job.options["tier"], job.options["respond_with_final"]) == (
        "terse", session.pk, 1, False)


def test_options_that_are_not_the_owners_are_refused(owner, outsider, clock):
    theirs = core_services.job_submit(user=outsider, task="Private").session
    with pytest.raises(core_services.Invalid, match="session_id"):
        every_minute(owner, options={"session_id": str(theirs.pk)})
    with pytest.raises(core_services.Invalid, match="unknown job option"):
        every_minute(owner, options={"user": "bob"})
    with pytest.raises(core_services.Invalid, match="max_risk"):
        every_minute(owner, max_risk="extreme")
    assert not Schedule.objects.exists()


# --- Pages ------------------------------------------------------------------------------------

def test_the_page_shows_the_next_five_runs_before_saving(alice, owner, clock):
    response = alice.post("/settings/schedules/new/", {"name": "Mornings", "cron": "0 9 * * 1-5",
                                                        "time_zone": "Europe/Berlin", "task": "Plan the day",
                                                        "max_risk": "low", "chat_role": "chat", "preview": "1"})
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("<li><time") == 5
    # It is 09:59 in Berlin: the first run is tomorrow's, and the weekend is skipped.
    assert "Tue 2026-03-03 09:00 CET" in page and "Mon 2026-03-09 09:00 CET" in page
    assert "Sat" not in page.split('id="next-runs"')[1].split("</ol>")[0]
    assert not Schedule.objects.exists()


def test_the_preview_fragment_names_a_bad_expression(alice, clock):
    response = alice.post("/settings/schedules/preview/", {"cron": "every morning", "time_zone": "UTC"},
                          headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert 'id="next-runs"' in response.content.decode() and "not a cron expression" in response.content.decode()
    assert "<form" not in response.content.decode()


def test_a_schedule_is_created_edited_run_disabled_and_deleted_from_its_pages(alice, owner, clock):
    fields = {"name": "Mornings", "cron": "0 9 * * *", "time_zone": "UTC", "task": "Plan {date}",
              "max_risk": "medium", "chat_role": "chat", "respond_with_final": "on", "enabled": "on"}
    response = alice.post("/settings/schedules/new/", fields)
    schedule = Schedule.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/settings/schedules/{schedule.pk}/"
    assert (schedule.max_risk, schedule.enabled, schedule.options["respond_with_final"]) == ("medium", True, True)
    assert "Mornings" in alice.get("/settings/schedules/").content.decode()
    alice.post(f"/settings/schedules/{schedule.pk}/", {**fields, "cron": "30 8 * * *"})
    assert Schedule.objects.get().cron == "30 8 * * *"
    alice.post(f"/settings/schedules/{schedule.pk}/run/")
    page = alice.get(f"/settings/schedules/{schedule.pk}/").content.decode()
    assert "Run now" in page and "queued" in page
    alice.post(f"/settings/schedules/{schedule.pk}/enabled/", {"enabled": "false"})
    assert not Schedule.objects.get().enabled and Schedule.objects.get().next_run_at is None
    alice.post(f"/settings/schedules/{schedule.pk}/delete/")
    assert not Schedule.objects.exists()


def test_a_bad_form_keeps_what_was_typed_and_says_why(alice, clock):
    response = alice.post("/settings/schedules/new/", {"name": "Oops", "cron": "0 25 * * *", "time_zone": "UTC",
                                                        "task": "Keep me", "max_risk": "low", "chat_role": "chat"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "not a cron expression" in page and "Keep me" in page and 'value="0 25 * * *"' in page


def test_another_persons_schedule_is_not_found_anywhere(bob, outsider_api, owner, clock):
    schedule = every_minute(owner)
    for path in (f"/settings/schedules/{schedule.pk}/",):
        assert bob.get(path).status_code == 404
    for action in ("run", "enabled", "delete"):
        assert bob.post(f"/settings/schedules/{schedule.pk}/{action}/", {"enabled": "false"}).status_code == 404
    assert outsider_api.get(f"/schedules/{schedule.pk}").status_code == 404
    assert outsider_api.post(f"/schedules/{schedule.pk}/run").status_code == 404
    assert outsider_api.client.delete(f"/schedules/{schedule.pk}", headers=outsider_api.headers).status_code == 404
    assert outsider_api.get("/schedules").json() == []
    assert Schedule.objects.get().enabled and not ScheduleRun.objects.exists()


def test_the_pages_need_a_signed_in_person(client, clock):
    assert client.get("/settings/schedules/").status_code == 302
    assert client.post("/settings/schedules/new/", {}).status_code == 302


def test_the_forms_need_the_csrf_token(owner, clock):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.post("/settings/schedules/new/", {"name": "x"}).status_code == 403


# --- API ----------------------------------------------------------------------------------------

def test_the_api_creates_lists_runs_replaces_and_deletes_schedules(api, owner, clock):
    created = api.post("/schedules", {"name": "Digest", "cron": "0 18 * * 1-5", "time_zone": "Europe/Berlin",
                                      "task": "Digest for {date}", "tier": 2, "respond_with_claude": False})
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["max_risk"], body["enabled"], body["options"]) == ("low", True, {"tier": 2,
                                                                                  "respond_with_final": False})
    assert body["next_run_at"] == "2026-03-02T17:00:00+00:00"
    assert [s["id"] for s in api.get("/schedules").json()] == [body["id"]]
    run = api.post(f"/schedules/{body['id']}/run")
    assert run.status_code == 202 and Job.objects.get(pk=run.json()["job_id"]).task == "Digest for 2026-03-02"
    assert api.get(f"/schedules/{body['id']}").json()["last_runs"][0]["manual"] is True
    replaced = api.put(f"/schedules/{body['id']}", {"name": "Digest", "cron": "0 7 * * *", "task": "Morning",
                                                    "enabled": False})
    assert replaced.status_code == 200 and replaced.json()["next_run_at"] is None
    assert api.delete(f"/schedules/{body['id']}").status_code == 204
    assert not Schedule.objects.exists()


def test_the_api_names_what_is_wrong(api, clock):
    response = api.post("/schedules", {"name": "x", "cron": "whenever", "task": "t"})
    assert response.status_code == 400 and "cron expression" in response.json()["detail"]
    response = api.post("/schedules", {"name": "x", "cron": "* * * * *", "task": "nul \u0000"})
    assert response.status_code == 400
    response = api.post("/schedules", {"name": "x", "cron": "* * * * *", "task": "t", "max_risk": "extreme"})
    assert response.status_code == 400


def test_the_api_needs_a_token(client, clock):
    assert client.get("/schedules").status_code == 401


def test_the_api_answers_a_wrong_method_and_a_wrong_address_in_json(api, clock):
    response = api.client.patch("/schedules/1", headers=api.headers)
    assert response.status_code == 405 and "detail" in response.json()
    assert api.get("/schedules/nothing/here").json() == {"detail": "not found"}


# --- Commands -----------------------------------------------------------------------------------

def run_command(*args: str) -> str:
    out = StringIO()
    call_command("schedules", *args, stdout=out)
    return out.getvalue()


def test_the_command_adds_lists_runs_and_removes(owner, clock):
    added = run_command("add", "alice", "*/15 * * * *", "Europe/Berlin", "Check the queue at {time}")
    schedule = Schedule.objects.get()
    assert f"schedule {schedule.pk} added" in added and schedule.max_risk == "low"
    listed = run_command("list")
    assert listed.startswith(f"{schedule.pk}\talice\t*/15 * * * *\tEurope/Berlin\tenabled")
    assert "job" in run_command("run", str(schedule.pk))
    assert Job.objects.get().task.startswith("Check the queue at ")
    run_command("remove", str(schedule.pk))
    assert not Schedule.objects.exists()


def test_the_command_says_what_is_wrong(owner, clock):
    with pytest.raises(CommandError, match="no user"):
        run_command("add", "nobody", "* * * * *", "UTC", "t")
    with pytest.raises(CommandError, match="time zone"):
        run_command("add", "alice", "* * * * *", "Nowhere/Special", "t")
    with pytest.raises(CommandError, match="no schedule"):
        run_command("remove", "999")


def test_the_schedule_page_shows_what_the_engine_offers_its_jobs(alice, owner, clock):
    from orchestrator.engine import state

    core_services.policy_update(user=owner, max_risk="high", overrides={}, confirmations={})
    schedule = every_minute(owner, max_risk="medium")
    page = alice.get(f"/settings/schedules/{schedule.pk}/").content.decode()
    shown = page.split('id="offered-tools"')[1].split("</p>")[0]
    job = services.schedule_run_now(user=owner, schedule_id=schedule.pk).job
    assert state.jobs_claim(owner="page-test", limit=1) == [str(job.pk)]
    action = state.next_action(owner="page-test", job_id=str(job.pk), memo=state.Memo())
    offered = sorted(spec["name"] for spec in action.tools)
    assert offered and sorted(part.split("</code>")[0] for part in shown.split("<code>")[1:]) == offered
    assert "workspace_delete" not in offered  # high risk, above the schedule's ceiling


def test_the_job_page_says_which_schedule_started_it_and_that_it_was_late(alice, owner, clock):
    schedule = every_minute(owner, name="Morning report")
    clock.set(datetime(2026, 3, 2, 9, 4, 30, tzinfo=UTC))
    (run,) = fire()
    page = alice.get(f"/jobs/{run.job_id}/").content.decode()
    origin = page.split('id="job-origin"')[1].split("</dd>")[0]
    assert "A schedule" in origin and f'href="/settings/schedules/{schedule.pk}/"' in origin
    assert "Morning report" in origin and "late, 5 times missed" in origin
    assert "tools up to low risk" in origin


def test_the_job_list_says_a_job_came_from_a_schedule(alice, owner, clock):
    schedule = every_minute(owner, task="Scheduled thing")
    services.schedule_run_now(user=owner, schedule_id=schedule.pk)
    core_services.job_submit(user=owner, task="Typed thing")
    rows = alice.get("/jobs/").content.decode().split('<li class="row">')[1:]
    assert "from a schedule" in next(row for row in rows if "Scheduled thing" in row)
    assert "from a" not in next(row for row in rows if "Typed thing" in row)
