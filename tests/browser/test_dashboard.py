"""The activity dashboard in real Chromium: its charts are drawn, readable in the dark scheme, and
the CSV link downloads the figures."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from orchestrator.models import Job, JobStatus, ToolCall, ToolCallStatus

pytestmark = pytest.mark.browser


@pytest.fixture
def some_activity(owner):
    for status in (JobStatus.COMPLETE, JobStatus.COMPLETE, JobStatus.ERROR):
        job = Job.objects.create(user=owner, task="Tidy the notes", status=status, orchestrator_model="demo:demo",
                                 usage={"input_tokens": 300, "output_tokens": 40, "model_calls": 2})
    ToolCall.objects.create(job=job, call_id="c1", round=1, position=0, name="write_note", verdict="ask",
                            status=ToolCallStatus.SUCCEEDED, decision="approved", decided_at=timezone.now())


def test_the_dashboard_draws_its_charts_and_downloads_its_numbers(sign_in, owner, some_activity, screenshot):
    page = sign_in(owner)
    page.goto("/jobs/")
    page.get_by_role("link", name="Activity").click()
    expect(page).to_have_url(re.compile(r"/activity/$"))
    expect(page.get_by_role("heading", name="Activity", level=1)).to_be_visible()
    for name in ("Finished jobs per day, stacked by outcome", "Input and output tokens per day, stacked by model",
                 "Tool calls per tool, by what became of them"):
        chart = page.get_by_role("img", name=name)
        expect(chart).to_be_visible()
        assert chart.locator("rect.chart-bar").count() >= 1
        box = chart.locator("rect.chart-bar").first.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0
    screenshot(page, "activity", full_page=True)

    page.get_by_role("link", name="7 days").click()
    expect(page.get_by_role("link", name="7 days")).to_have_attribute("aria-current", "true")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename == "cortex-activity-mine-7d.csv"
    rows = list(csv.reader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert ["jobs", timezone.localdate().isoformat(), "", "complete", "2"] in rows
    assert ["tool_calls", "", "write_note", "approved", "1"] in rows


def test_the_charts_follow_the_dark_scheme(sign_in, owner, some_activity):
    page = sign_in(owner)
    page.emulate_media(color_scheme="dark")
    page.goto("/activity/")
    chart = page.get_by_role("img", name="Finished jobs per day, stacked by outcome")
    text_fill = chart.locator("text").first.evaluate("e => getComputedStyle(e).fill")
    card_background = page.locator(".card").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert text_fill == "rgb(154, 165, 181)"  # --muted of the dark scheme, on a dark card
    assert card_background == "rgb(22, 29, 39)"
    bar_fill = chart.locator("rect.chart-bar").first.evaluate("e => getComputedStyle(e).fill")
    assert bar_fill not in ("", "none", "rgb(0, 0, 0)")
