"""The activity dashboard: what the person's agents (or, for staff who ask, everyone's) have been
doing over the last 7, 30 or 90 days, as SVG charts, tables and one CSV file."""

from __future__ import annotations

import csv
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import charts, dashboard, selectors
from .common import login_required

# The stylesheet has six series colours: beyond five models, the rest are summed as one.
MODELS_SHOWN = 5


def _context(data: dashboard.Activity, *, everyone: bool) -> dict[str, Any]:
    outcome_names = [label for _, label in dashboard.JOB_OUTCOMES]
    decision_names = [label for _, label in dashboard.CALL_DECISIONS]
    days = [(date.strftime("%-d %b"), date.strftime("%a %-d %b %Y"), date) for date in data.period.dates]
    job_rows = [(date, [data.jobs_by_day[date][key] for key, _ in dashboard.JOB_OUTCOMES]) for *_, date in days]
    shown, rest = data.models[:MODELS_SHOWN], data.models[MODELS_SHOWN:]
    model_names = [*shown, *(["other models"] if rest else [])]

    def tokens_of(date: Any) -> list[int]:
        tokens = data.tokens_by_day[date]
        return [*(tokens[model] for model in shown), *([sum(tokens[model] for model in rest)] if rest else [])]

    token_rows = [(date, tokens_of(date)) for *_, date in days]
    call_rows = [(name, [decisions[key] for key, _ in dashboard.CALL_DECISIONS])
                 for name, decisions in data.calls_by_tool.items()]
    return {
        "section": "activity",
        "data": data,
        "everyone": everyone,
        "periods": dashboard.PERIODS,
        "outcome_names": outcome_names,
        "outcome_legend": list(enumerate(outcome_names)),
        "decision_names": decision_names,
        "job_rows": job_rows,
        "token_rows": token_rows,
        "model_names": model_names,
        "model_legend": list(enumerate(model_names)),
        "call_rows": call_rows,
        "jobs_chart": charts.svg(charts.stacked_columns([(short, long, values) for (short, long, _), (_, values)
                                                         in zip(days, job_rows)], outcome_names),
                                 id="jobs-chart", label="Finished jobs per day, stacked by outcome", kind="chart-day"),
        "tokens_chart": charts.svg(charts.stacked_columns([(short, long, values) for (short, long, _), (_, values)
                                                           in zip(days, token_rows)], model_names),
                                   id="tokens-chart", label="Input and output tokens per day, stacked by model",
                                   kind="chart-day"),
        "decision_legend": list(zip(dashboard.CALL_DECISION_COLOURS, decision_names)),
        "calls_chart": charts.svg(charts.stacked_rows(call_rows, decision_names, dashboard.CALL_DECISION_COLOURS),
                                  id="calls-chart",
                                  label="Tool calls per tool, by what became of them", kind="chart-name"),
        "median_wait_seconds": None if data.median_wait is None else data.median_wait.total_seconds(),
    }


@login_required
@require_GET
def activity(request: HttpRequest) -> HttpResponse:
    """`?period=7|30|90` (days), `?everyone=1` for staff (ignored for anyone else), `?format=csv`."""
    days = dashboard.parse_period(request.GET.get("period"))
    everyone = selectors.activity_sees_everyone(request.user, site_wide=request.GET.get("everyone") == "1")
    data = dashboard.activity(selectors.activity_scope(request.user, site_wide=everyone), days=days)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        scope = "everyone" if everyone else "mine"
        response["Content-Disposition"] = f'attachment; filename="cortex-activity-{scope}-{days}d.csv"'
        csv.writer(response).writerows(dashboard.csv_rows(data))
        return response
    return render(request, "activity/dashboard.html", _context(data, everyone=everyone))
