"""A job's timeline entries as HTML, from one function for the page's first render and for the
stream's fragments alike, so a page that is reloaded shows exactly what a watched one showed.

Plain Python rather than a template partial: the page renders a job's whole history on every load,
a long job has a thousand events and more, and the template engine costs about ten times as much
per entry. Every value from an event is escaped, as the template engine would (`html.escape`, which
Django's `escape` wraps, without its per-call overhead); markdown goes through the same sanitising
filter as the answer's.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any, Protocol

from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

from .templatetags.cortex import event_class, event_label, model_label, pretty_json, render_markdown, status_label

# Streamed answer text updates the answer panel; it is not a step worth a timeline entry.
NOT_IN_TIMELINE = frozenset({"answer.delta", "answer.reset"})

Data = Mapping[str, Any]


class Step(Protocol):
    """What an entry shows of an event: a `JobEvent`, or a row of its fields."""

    seq: int
    type: str
    data: Any
    at: datetime


def entries(events: Iterable[Step]) -> SafeString:
    """The timeline entries of `events`, in their order, leaving out those that are not steps."""
    zone = timezone.get_current_timezone()
    return mark_safe("".join(entry(event, zone) for event in events if event.type not in NOT_IN_TIMELINE))


def entry(event: Step, zone: tzinfo | None = None) -> str:
    """One `<li id="event-<seq>">`: what kind of step, when (in `zone`, by default the current time
    zone, as templates show times), and what happened."""
    at = event.at.astimezone(zone or timezone.get_current_timezone()).isoformat()
    body = BODIES.get(event.type)
    data = event.data if isinstance(event.data, Mapping) else {}
    content = body(data) if body is not None else _code(pretty_json(event.data))
    # An ISO timestamp's characters 11 to 19 are its time of day to the second (`H:i:s`).
    return f'<li id="event-{event.seq}" {_kind(event.type)}<time datetime="{at}">{at[11:19]}</time></div>{content}</li>'


@functools.lru_cache(maxsize=64)
def _kind(event_type: str) -> str:
    """What an entry's start says of its type: its class and its label (a few types, all known)."""
    return (f'class="event {_attr(event_class(event_type))}"><div class="event-head">'
            f'<span class="event-kind">{_text(event_label(event_type))}</span>')


def _text(value: Any) -> str:
    """A value of an event's data as the text of an element, escaped; nothing for one that is missing."""
    return "" if value is None else html.escape(str(value), quote=False)


def _attr(value: Any) -> str:
    """A value of an event's data inside an attribute's quotes, escaped."""
    return "" if value is None else html.escape(str(value))


def _code(text: str, css: str = "code") -> str:
    return f'<pre class="{css}">{_text(text)}</pre>'


def _name(data: Data) -> str:
    return f"<code>{_text(data.get('name'))}</code>"


def _count(value: Any) -> int:
    return len(value) if isinstance(value, (list, tuple, dict, str)) else 0


def _job_status(data: Data) -> str:
    status = data.get("status")
    if status == "queued":
        return "<p>Queued.</p>"
    if status == "running":
        return "<p>Running.</p>"
    if status == "awaiting_confirmation":
        count = _count(data.get("tools"))
        return f"<p>Waiting for your decision on {count} call{'' if count == 1 else 's'}.</p>"
    if status == "complete":
        by = data.get("backend_label")
        return f"<p>Complete{', answered by ' + _text(by) if by else ''}.</p>"
    if status == "error":
        return f'<p class="error">{_text(data.get("error"))}</p>'
    if status == "cancelled":
        by = data.get("by")
        return f"<p>Cancelled{' by ' + _text(by) if by else ''}.</p>"
    return f"<p>{_text(status_label(str(status or '')))}</p>"


def _model_turn(data: Data) -> str:
    usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
    step = "Final answer" if data.get("purpose") == "final" else f"Round {_text(data.get('round'))}"
    html = (f'<p>{step} <span class="muted">· {_text(model_label(str(data.get("model") or "")))} · '
            f'{_text(usage.get("input_tokens"))} in, {_text(usage.get("output_tokens"))} out</span></p>')
    calls = data.get("tool_calls")
    if calls:
        names = ", ".join(f"<code>{_text(call.get('name') if isinstance(call, Mapping) else None)}</code>"
                          for call in calls)
        html += f"<p>Asks for {names}.</p>"
    if data.get("text"):
        html += ('<details><summary>What the model wrote</summary><div class="prose">'
                 f"{render_markdown(str(data['text']))}</div></details>")
    return html


VERDICTS = {"run": "runs", "ask": "asks you first"}


def _tool_call(data: Data) -> str:
    risk = str(data.get("risk") or "unknown")
    verdict = data.get("verdict")
    html = (f'<p class="event-line">{_name(data)} <span class="badge risk risk-{_attr(risk)}">'
            f'{_text(capfirst(risk))} risk</span> <span class="verdict verdict-{_attr(verdict)}">'
            f'{VERDICTS.get(verdict, "refused")}</span></p>')
    if data.get("reason"):
        html += f'<p class="muted small">{_text(capfirst(str(data["reason"])))}</p>'
    html += _code(pretty_json(data.get("args")))
    if verdict == "refuse" and data.get("result"):
        html += f'<p class="error small">{_text(data["result"])}</p>'
    return html


def _tool_decided(data: Data) -> str:
    decision = data.get("decision")
    if data.get("expired"):
        who = f"by the system: nobody decided within {_text(data.get('ttl_seconds'))} seconds"
    else:
        who = f"by {_text(data.get('by'))}"
    remember = " for the rest of this job" if data.get("remember") else ""
    reason = ""
    if decision == "denied" and data.get("reason") and not data.get("expired"):
        reason = f": “{_text(data['reason'])}”"
    html = (f'<p class="event-line">{_name(data)} <span class="decision decision-{_attr(decision)}">'
            f"{_text(decision)}</span> {who}{remember}{reason}</p>")
    if decision == "edited":
        html += ('<div class="diff">'
                 f'<div><p class="muted small">Proposed</p>{_code(pretty_json(data.get("original_args")))}</div>'
                 f'<div><p class="muted small">Runs with</p>{_code(pretty_json(data.get("args")))}</div></div>')
    return html


def _tool_started(data: Data) -> str:
    return f"<p>{_name(data)} started.</p>"


def _tool_finished(data: Data) -> str:
    status = data.get("status")
    duration = data.get("duration_ms")
    took = "" if duration is None else f' <span class="muted">in {_text(duration)} ms</span>'
    html = (f'<p class="event-line">{_name(data)} <span class="outcome outcome-{_attr(status)}">{_text(status)}</span>'
            f"{took}</p>")
    if data.get("result"):
        html += _code(str(data["result"]), "code result result-error" if data.get("is_error") else "code result")
        if data.get("truncated"):
            html += '<p class="muted small">Shortened; the model saw the whole result.</p>'
    return html


def _tool_retrying(data: Data) -> str:
    return f"<p>{_name(data)} runs again: {_text(data.get('reason'))}.</p>"


def _tool_interrupted(data: Data) -> str:
    return f"<p>{_name(data)} was interrupted by a restart and may have run; it waits for your decision again.</p>"


def _model_retry(data: Data) -> str:
    return (f"<p>The model call failed (attempt {_text(data.get('attempt'))}): {_text(data.get('error'))}. "
            f"Retrying in {_text(data.get('wait_seconds'))} s.</p>")


BODIES: dict[str, Callable[[Data], str]] = {
    "job.status": _job_status,
    "model.turn": _model_turn,
    "tool.call": _tool_call,
    "tool.decided": _tool_decided,
    "tool.started": _tool_started,
    "tool.finished": _tool_finished,
    "tool.retrying": _tool_retrying,
    "tool.interrupted": _tool_interrupted,
    "model.retry": _model_retry,
}
