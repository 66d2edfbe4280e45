"""The activity dashboard: exact figures over a small fixed set of jobs and calls, nobody else's
jobs counted, the site-wide view for staff only, the CSV, and charts that follow the colour scheme."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import re
import zoneinfo

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestrator import charts, dashboard, selectors
from orchestrator.models import FINISHED_STATUSES, ActivityDay, Job, JobStatus, ToolCall, ToolCallStatus

pytestmark = pytest.mark.django_db

TODAY = timezone.localdate()
YESTERDAY = TODAY - dt.timedelta(days=1)
LONG_AGO = TODAY - dt.timedelta(days=40)


def at(day: dt.date, minutes: int = 60) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time())) + dt.timedelta(minutes=minutes)


def job(user, day: dt.date, status: str, *, model: str = "demo:demo", tokens: tuple[int, int] = (0, 0)) -> Job:
    made = Job.objects.create(user=user, task="t", status=status, orchestrator_model=model,
                              usage={"input_tokens": tokens[0], "output_tokens": tokens[1], "model_calls": 1})
    Job.objects.filter(pk=made.pk).update(created_at=at(day))
    made.refresh_from_db()
    return made


def call(of: Job, name: str, *, verdict: str, status: str, decision: str = "", waited: int | None = None,
         is_error: bool = False, expired: bool = False) -> ToolCall:
    """A call of `of`'s; `decision` is its owner's, or with `expired` the system's."""
    made = ToolCall.objects.create(job=of, call_id=f"c{of.tool_calls.count()}", round=1,
                                   position=of.tool_calls.count(), name=name, verdict=verdict, status=status,
                                   decision=decision, is_error=is_error,
                                   decided_by=of.user if decision and not expired else None)
    recorded = of.created_at + dt.timedelta(seconds=5)
    ToolCall.objects.filter(pk=made.pk).update(
        created_at=recorded, decided_at=None if waited is None else recorded + dt.timedelta(seconds=waited))
    return made


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("sam", password="sam-password-1", is_staff=True)


@pytest.fixture
def activity_data(owner, outsider):
    """Alice's jobs of today, yesterday and 40 days ago, and one job of Bob's today."""
    approved = job(owner, TODAY, JobStatus.COMPLETE, tokens=(100, 20))
    call(approved, "write_note", verdict="ask", status=ToolCallStatus.SUCCEEDED, decision="approved", waited=10)
    call(approved, "read_file", verdict="run", status=ToolCallStatus.SUCCEEDED)
    denied = job(owner, TODAY, JobStatus.COMPLETE, tokens=(40, 2))
    call(denied, "write_note", verdict="ask", status=ToolCallStatus.DENIED, decision="denied", waited=30,
         is_error=True)

    edited = job(owner, YESTERDAY, JobStatus.ERROR, model="openai:gpt-4o", tokens=(50, 5))
    call(edited, "write_note", verdict="ask", status=ToolCallStatus.FAILED, decision="edited", waited=20,
         is_error=True)
    cancelled = job(owner, YESTERDAY, JobStatus.CANCELLED)
    call(cancelled, "write_note", verdict="ask", status=ToolCallStatus.CANCELLED)
    refused = job(owner, YESTERDAY, JobStatus.COMPLETE, tokens=(10, 1))
    call(refused, "shell", verdict="refuse", status=ToolCallStatus.REFUSED, is_error=True)
    job(owner, YESTERDAY, JobStatus.RUNNING, tokens=(7, 3))

    job(owner, LONG_AGO, JobStatus.COMPLETE, tokens=(1000, 0))

    bobs = job(outsider, TODAY, JobStatus.COMPLETE, tokens=(999, 1))
    call(bobs, "write_note", verdict="ask", status=ToolCallStatus.SUCCEEDED, decision="approved", waited=1000)


def activity_of(user, *, days: int = 30, site_wide: bool = False) -> dashboard.Activity:
    return dashboard.activity(selectors.activity_scope(user, site_wide=site_wide), days=days)


def outcomes(complete=0, troubled=0, error=0, cancelled=0) -> dict[str, int]:
    return {"complete": complete, "complete_with_problems": troubled, "error": error, "cancelled": cancelled}


# --- The figures ---------------------------------------------------------------------------------

def test_it_counts_finished_jobs_per_day_by_outcome(owner, activity_data):
    data = activity_of(owner)
    assert len(data.jobs_by_day) == 30 and min(data.jobs_by_day) == TODAY - dt.timedelta(days=29)
    assert data.jobs_by_day[TODAY] == outcomes(complete=1, troubled=1)
    assert data.jobs_by_day[YESTERDAY] == outcomes(troubled=1, error=1, cancelled=1)
    assert sum(sum(day.values()) for day in data.jobs_by_day.values()) == 5


def test_a_longer_period_reaches_further_back(owner, activity_data):
    data = activity_of(owner, days=90)
    assert data.jobs_by_day[LONG_AGO] == outcomes(complete=1)
    assert data.totals["jobs"] == 6


def test_it_sums_tokens_per_day_by_model_whatever_the_outcome(owner, activity_data):
    data = activity_of(owner)
    assert data.models == ["demo:demo", "openai:gpt-4o"]
    assert data.tokens_by_day[TODAY] == {"demo:demo": 162, "openai:gpt-4o": 0}
    assert data.tokens_by_day[YESTERDAY] == {"demo:demo": 21, "openai:gpt-4o": 55}
    assert data.totals["tokens"] == 238


def test_it_counts_tool_calls_by_tool_and_what_became_of_them(owner, activity_data):
    data = activity_of(owner)
    none = {key: 0 for key, _ in dashboard.CALL_DECISIONS}
    assert data.calls_by_tool == {
        "write_note": {**none, "approved": 1, "denied": 1, "refused_or_failed": 1, "undecided": 1},
        "read_file": {**none, "ran": 1},
        "shell": {**none, "refused_or_failed": 1},
    }
    assert list(data.calls_by_tool) == ["write_note", "read_file", "shell"]  # the busiest tool first


def test_an_edited_call_that_ran_fine_counts_as_edited(owner):
    edited = job(owner, TODAY, JobStatus.COMPLETE)
    call(edited, "write_note", verdict="ask", status=ToolCallStatus.SUCCEEDED, decision="edited", waited=3)
    assert activity_of(owner).calls_by_tool["write_note"]["edited"] == 1


def test_a_call_that_expired_is_told_apart_from_one_a_person_denied(owner):
    waited = job(owner, TODAY, JobStatus.COMPLETE)
    call(waited, "write_note", verdict="ask", status=ToolCallStatus.DENIED, decision="denied", waited=300,
         is_error=True, expired=True)
    call(waited, "write_note", verdict="ask", status=ToolCallStatus.DENIED, decision="denied", waited=5,
         is_error=True)
    data = activity_of(owner)
    assert data.calls_by_tool["write_note"]["expired"] == 1
    assert data.calls_by_tool["write_note"]["denied"] == 1
    assert data.decided_confirmations == 2  # both waited: the median counts the expired one's wait too


def test_days_begin_at_the_time_zones_midnight_also_where_the_clocks_change(owner):
    """Europe/Berlin leaves summer time on 25 October 2026: that day has 25 hours. A job at 00:30
    on it (22:30 UTC the day before) and one at 23:30 (22:30 UTC that day) are both of the 25th."""
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    with timezone.override(berlin):
        for local in (dt.datetime(2026, 10, 24, 23, 30), dt.datetime(2026, 10, 25, 0, 30),
                      dt.datetime(2026, 10, 25, 23, 30)):
            made = Job.objects.create(user=owner, task="t", status=JobStatus.COMPLETE)
            Job.objects.filter(pk=made.pk).update(created_at=local.replace(tzinfo=berlin))
        data = dashboard.activity(selectors.activity_scope(owner), days=90,
                                  now=dt.datetime(2026, 12, 1, 12, tzinfo=berlin))
    assert data.jobs_by_day[dt.date(2026, 10, 24)]["complete"] == 1
    assert data.jobs_by_day[dt.date(2026, 10, 25)]["complete"] == 2
    assert data.totals["jobs"] == 3


def test_it_finds_the_median_time_a_confirmation_waited(owner, activity_data):
    data = activity_of(owner)
    assert data.median_wait == dt.timedelta(seconds=20)  # of 10, 20 and 30 s
    assert data.decided_confirmations == 3


def test_the_median_of_an_even_number_of_waits_is_between_the_middle_two(staff, activity_data):
    data = activity_of(staff, site_wide=True)
    assert data.median_wait == dt.timedelta(seconds=25)  # of 10, 20, 30 and 1000 s
    assert data.decided_confirmations == 4


def test_with_no_jobs_every_figure_is_zero(owner):
    data = activity_of(owner, days=7)
    assert list(data.jobs_by_day.values()) == [outcomes()] * 7
    assert data.models == [] and data.calls_by_tool == {}
    assert data.median_wait is None and data.decided_confirmations == 0


# --- Whose jobs ----------------------------------------------------------------------------------

def test_it_never_counts_another_users_jobs(outsider, activity_data):
    data = activity_of(outsider)
    assert data.jobs_by_day[TODAY] == outcomes(complete=1)
    assert data.totals == {**outcomes(complete=1), "jobs": 1, "tokens": 1000, "calls": 1}
    assert data.median_wait == dt.timedelta(seconds=1000)


def test_staff_see_everyones_jobs_only_when_they_ask(staff, activity_data):
    assert activity_of(staff).totals["jobs"] == 0
    everyone = activity_of(staff, site_wide=True)
    assert everyone.jobs_by_day[TODAY] == outcomes(complete=2, troubled=1)
    assert everyone.calls_by_tool["write_note"]["approved"] == 2


def test_the_site_wide_toggle_is_ignored_for_anyone_but_staff(outsider, activity_data):
    assert activity_of(outsider, site_wide=True).totals["jobs"] == 1
    page = Client()
    page.force_login(outsider)
    response = page.get(reverse("activity"), {"everyone": "1", "format": "csv"})
    assert "everyone" not in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert ["jobs", TODAY.isoformat(), "", "complete", "1"] in rows
    assert sum(int(row[-1]) for row in rows if row[0] == "jobs") == 1
    assert "Everyone’s" not in page.get(reverse("activity"), {"everyone": "1"}).text


# --- Days counted once ---------------------------------------------------------------------------

def figures_of(data: dashboard.Activity) -> tuple:
    return data.jobs_by_day, data.tokens_by_day, data.models, data.totals


def counted_afresh(user, **kwargs) -> dashboard.Activity:
    ActivityDay.objects.all().delete()
    try:
        return activity_of(user, **kwargs)
    finally:
        ActivityDay.objects.all().delete()


def test_a_day_that_has_ended_is_counted_once_then_read_back(owner, monkeypatch):
    three_days_ago = TODAY - dt.timedelta(days=3)
    job(owner, three_days_ago, JobStatus.COMPLETE, tokens=(10, 2))
    asked: list[list[dt.date]] = []
    count_days = dashboard.count_days
    monkeypatch.setattr(dashboard, "count_days", lambda scope, period, dates: asked.append(dates)
                        or count_days(scope, period, dates))
    first = activity_of(owner, days=7)
    second = activity_of(owner, days=7)
    # The second time, only today is counted, and yesterday too within the hour after midnight,
    # while a job stamped just before it may still be committed.
    now = timezone.localtime()
    settling = now - now.replace(hour=0, minute=0, second=0, microsecond=0) < dashboard.SETTLE_MARGIN
    assert len(asked[0]) == 7 and asked[1] == [TODAY - dt.timedelta(days=1)] * settling + [TODAY]
    assert figures_of(second) == figures_of(first)
    assert second.jobs_by_day[three_days_ago] == outcomes(complete=1)
    assert second.tokens_by_day[three_days_ago] == {"demo:demo": 12}


def test_a_day_is_stored_only_once_it_ended_an_hour_ago(owner):
    """A job stamped just before midnight may commit just after it: the day waits an hour."""
    job(owner, YESTERDAY, JobStatus.COMPLETE)
    dashboard.activity(selectors.activity_scope(owner), days=7, now=at(TODAY, minutes=30))
    assert set(ActivityDay.objects.values_list("day", flat=True)) == {TODAY - dt.timedelta(days=n) for n in range(2, 7)}
    dashboard.activity(selectors.activity_scope(owner), days=7, now=at(TODAY, minutes=61))
    assert ActivityDay.objects.filter(day=YESTERDAY, jobs__complete=1).exists()


def test_a_job_that_finishes_after_its_day_was_stored_counts_when_it_finishes(owner):
    day = TODAY - dt.timedelta(days=2)
    job(owner, day, JobStatus.COMPLETE, tokens=(5, 5))
    waiting = job(owner, day, JobStatus.AWAITING_CONFIRMATION, tokens=(30, 3))
    before = activity_of(owner, days=7)
    assert before.jobs_by_day[day] == outcomes(complete=1)
    assert before.tokens_by_day[day] == {"demo:demo": 43}  # a waiting job's tokens count already

    Job.objects.filter(pk=waiting.pk).update(status=JobStatus.COMPLETE, usage={"input_tokens": 60, "output_tokens": 6})
    call(waiting, "write_note", verdict="ask", status=ToolCallStatus.DENIED, decision="denied", waited=9,
         is_error=True)
    after = activity_of(owner, days=7)
    assert after.jobs_by_day[day] == outcomes(complete=1, troubled=1)
    assert after.tokens_by_day[day] == {"demo:demo": 76}
    assert ActivityDay.objects.get(owner=owner, day=day).pending == []  # counted in with the rest
    assert figures_of(activity_of(owner, days=7)) == figures_of(after) == figures_of(counted_afresh(owner, days=7))


def test_deleting_a_job_forgets_the_figures_stored_for_its_day(owner):
    day = TODAY - dt.timedelta(days=3)
    job(owner, day, JobStatus.COMPLETE, tokens=(1, 1))
    gone = job(owner, day, JobStatus.ERROR, model="openai:gpt-4o", tokens=(5, 5))
    assert activity_of(owner, days=7).jobs_by_day[day] == outcomes(complete=1, error=1)
    gone.delete()
    data = activity_of(owner, days=7)
    assert data.jobs_by_day[day] == outcomes(complete=1)
    assert data.models == ["demo:demo"]


def test_deleting_a_person_takes_their_jobs_out_of_everyones_figures(staff, owner, outsider):
    day = TODAY - dt.timedelta(days=3)
    job(owner, day, JobStatus.COMPLETE)
    job(outsider, day, JobStatus.ERROR)
    assert activity_of(staff, days=7, site_wide=True).jobs_by_day[day] == outcomes(complete=1, error=1)
    outsider.delete()
    assert activity_of(staff, days=7, site_wide=True).jobs_by_day[day] == outcomes(complete=1)


def test_stored_figures_are_never_shared_between_people_nor_with_everyones(staff, owner, outsider):
    day = TODAY - dt.timedelta(days=3)
    job(owner, day, JobStatus.COMPLETE)
    job(outsider, day, JobStatus.ERROR)
    assert activity_of(staff, days=7, site_wide=True).jobs_by_day[day] == outcomes(complete=1, error=1)
    assert activity_of(owner, days=7).jobs_by_day[day] == outcomes(complete=1)
    assert activity_of(outsider, days=7).jobs_by_day[day] == outcomes(error=1)
    assert activity_of(staff, days=7).jobs_by_day[day] == outcomes()
    assert activity_of(staff, days=7, site_wide=True).jobs_by_day[day] == outcomes(complete=1, error=1)


def test_figures_stored_in_one_time_zone_are_not_read_in_another(owner):
    """23:30 UTC is half past midnight of the next day in Berlin (UTC+1 in winter)."""
    day = dt.date(2026, 11, 20)
    made = Job.objects.create(user=owner, task="t", status=JobStatus.COMPLETE)
    Job.objects.filter(pk=made.pk).update(created_at=dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.UTC))
    now = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    with timezone.override(dt.UTC):
        in_utc = dashboard.activity(selectors.activity_scope(owner), days=30, now=now)
    with timezone.override(zoneinfo.ZoneInfo("Europe/Berlin")):
        in_berlin = dashboard.activity(selectors.activity_scope(owner), days=30, now=now)
    assert in_utc.jobs_by_day[day] == outcomes(complete=1)
    assert in_berlin.jobs_by_day[day] == outcomes()
    assert in_berlin.jobs_by_day[day + dt.timedelta(days=1)] == outcomes(complete=1)


def test_stored_figures_are_those_counted_afresh_as_jobs_come_and_go(staff, owner, outsider):
    """Many jobs over three weeks, some of them still running or waiting; each view is read back
    from its stored days, then some of those jobs finish and others are deleted: every figure, each
    time, is the one counted from the jobs themselves."""
    rng = random.Random(7)
    statuses = [JobStatus.COMPLETE] * 5 + [JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.RUNNING,
                                           JobStatus.AWAITING_CONFIRMATION, JobStatus.QUEUED]
    made = []
    for _ in range(80):
        made.append(job(rng.choice([owner, outsider, staff]), TODAY - dt.timedelta(days=rng.randrange(21)),
                        rng.choice(statuses), model=rng.choice(["demo:demo", "openai:gpt-4o", "gemini:x"]),
                        tokens=(rng.randrange(100), rng.randrange(10))))
        if rng.random() < 0.3:
            call(made[-1], "shell", verdict="refuse", status=ToolCallStatus.REFUSED, is_error=True)
    views = [(owner, False), (outsider, False), (staff, True), (staff, False)]

    def all_alike() -> None:
        for user, site_wide in views:
            stored = activity_of(user, site_wide=site_wide)
            assert figures_of(activity_of(user, site_wide=site_wide)) == figures_of(stored)
            assert figures_of(stored) == figures_of(counted_afresh(user, site_wide=site_wide)), (user, site_wide)
            activity_of(user, site_wide=site_wide)  # stored again for the next round

    all_alike()
    for unfinished in [one for one in made if one.status not in FINISHED_STATUSES][::2]:
        Job.objects.filter(pk=unfinished.pk).update(status=rng.choice(FINISHED_STATUSES),
                                                    usage={"input_tokens": 500, "output_tokens": 5})
        if rng.random() < 0.5:
            call(unfinished, "write_note", verdict="ask", status=ToolCallStatus.DENIED, decision="denied",
                 waited=3, is_error=True)
    for deleted in made[::9]:
        deleted.delete()
    all_alike()


# --- The page ------------------------------------------------------------------------------------

def test_the_csv_holds_every_figure(alice, activity_data):
    response = alice.get(reverse("activity"), {"period": "7", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="cortex-activity-mine-7d.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["series", "day", "name", "category", "value"]
    assert len([row for row in rows if row[0] == "jobs"]) == 7 * 4
    assert ["jobs", YESTERDAY.isoformat(), "", "complete_with_problems", "1"] in rows
    assert ["tokens", TODAY.isoformat(), "demo:demo", "input_and_output", "162"] in rows
    assert ["tool_calls", "", "shell", "refused_or_failed", "1"] in rows
    assert ["confirmation_wait", "", "", "median_seconds", "20.0"] in rows
    assert ["confirmation_wait", "", "", "decided", "3"] in rows


def test_the_page_shows_three_charts_with_their_numbers(alice, activity_data):
    response = alice.get(reverse("activity"), {"period": "7"})
    assert response.status_code == 200
    page = response.text
    assert page.count('<svg class="chart') == 3
    assert page.count("<title id=") == 3 and page.count('role="img"') == 3
    assert page.count('<rect class="chart-bar') == 5 + 3 + 6  # outcomes by day, models by day, decisions by tool
    assert page.count("<table") == 3
    assert '<span id="median-wait">20.0 s</span>' in page
    assert 'href="?period=7&amp;format=csv"' in page
    assert 'aria-current="page">Activity</a>' in page


def test_the_page_renders_with_no_data(alice):
    response = alice.get(reverse("activity"))
    assert response.status_code == 200
    assert "No tool calls in this period." in response.text
    assert "No confirmation decided in this period." in response.text
    assert response.text.count('<rect class="chart-bar') == 0


def test_an_unknown_period_falls_back_to_thirty_days(alice):
    rows = list(csv.reader(io.StringIO(alice.get(reverse("activity"), {"period": "365", "format": "csv"}).text)))
    assert len([row for row in rows if row[0] == "jobs"]) == 30 * 4


def test_the_charts_take_their_colours_from_the_stylesheet(alice, activity_data):
    page = alice.get(reverse("activity")).text
    svgs = re.findall(r"<svg class=\"chart.*?</svg>", page, re.S)
    assert svgs
    for svg in svgs:
        # No fixed colour that would vanish on a dark background: text is currentColor, bars a series class.
        assert not re.search(r"#[0-9a-fA-F]{3,6}\b|\brgb\(|\bstyle=|fill=\"(?!currentColor)", svg)
        assert 'fill="currentColor"' in svg
    stylesheet = (settings.BASE_DIR / "static" / "cortex.css").read_text()
    for series in range(6):
        assert re.search(rf"\.chart-bar\.series-{series}[^{{]*{{ fill: var\(--series-{series}\)", stylesheet)


def test_signed_out_visitors_are_sent_to_sign_in():
    response = Client().get(reverse("activity"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_takes_only_get(alice):
    assert alice.post(reverse("activity")).status_code == 405


# --- The chart geometry --------------------------------------------------------------------------

def test_columns_stack_their_series_on_a_readable_scale():
    chart = charts.stacked_columns([("1", "day 1", [3, 0, 1]), ("2", "day 2", [0, 0, 0])], ["a", "b", "c"])
    assert [bar.series for bar in chart.bars] == [0, 2]
    low, high = chart.bars
    assert high.y + high.height == pytest.approx(low.y)  # c sits on a
    assert [tick.text for tick in chart.ticks] == ["0", "2.5", "5"]  # 4 rounds up to 5
    assert low.title == "day 1: a 3"


def test_a_nice_ceiling_is_one_two_or_five_times_a_power_of_ten():
    assert [charts.nice_ceiling(n) for n in (0, 1, 3, 7, 11, 200, 201)] == [1, 1, 5, 10, 20, 200, 500]
