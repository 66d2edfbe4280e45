"""Template filters for rendering what models and tools wrote."""

from __future__ import annotations

import json
from typing import Any

import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

from .. import providers, selectors

register = template.Library()

# What Markdown may produce in an answer. Anything else (scripts, styles, event handlers, htmx
# attributes a model could write to make the page fetch something) is stripped.
ALLOWED_TAGS = {
    "a", "b", "blockquote", "br", "code", "dd", "del", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}
ALLOWED_SCHEMES = {"http", "https", "mailto"}

STATUS_LABELS = {
    "queued": "Queued",
    "running": "Running",
    "awaiting_confirmation": "Waiting for you",
    "complete": "Complete",
    selectors.COMPLETE_WITH_PROBLEMS: "Complete with denied or failed calls",
    "error": "Error",
    "cancelled": "Cancelled",
}

EVENT_LABELS = {
    "job.status": "Status",
    "model.turn": "Model",
    "model.retry": "Retry",
    "tool.call": "Tool call",
    "tool.decided": "Decision",
    "tool.started": "Started",
    "tool.finished": "Result",
    "tool.retrying": "Retry",
    "tool.interrupted": "Interrupted",
}


# CommonMark, as models write it (a list right after "said:", fenced code), plus GitHub's tables.
# Raw HTML passes through the parser on purpose: nh3 then keeps what is allowed and drops the rest.
MARKDOWN = MarkdownIt("commonmark").enable("table")


def render_markdown(text: str) -> str:
    html = MARKDOWN.render(text or "")
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=ALLOWED_SCHEMES,
                     clean_content_tags={"script", "style"}, link_rel="noopener noreferrer nofollow")


@register.filter
def markdown(text: str | None) -> SafeString:
    return mark_safe(render_markdown(text or ""))  # nh3 leaves only the allowed tags and attributes


@register.filter
def pretty_json(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def short_id(value: Any) -> str:
    return str(value)[:8]


@register.filter
def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.replace("_", " "))


@register.filter
def outcome(job: Any) -> str:
    """The job's status, except that a complete job with calls that ended in an error (counted in
    `problem_calls`, which `selectors.with_problem_calls` annotates) is not shown as a clean one."""
    return selectors.outcome_of(job.status, getattr(job, "problem_calls", 0))


@register.filter
def outcome_label(job: Any) -> str:
    if outcome(job) == selectors.COMPLETE_WITH_PROBLEMS:
        count = job.problem_calls
        return f"Complete · {count} call{'' if count == 1 else 's'} denied or failed"
    return status_label(job.status)


@register.filter
def model_label(value: str) -> str:
    """`provider:model` as its provider names it, e.g. "Claude · claude-sonnet-4-5"."""
    return providers.label(value) if value else ""


@register.filter
def event_class(event_type: str) -> str:
    return "event-" + event_type.replace(".", "-").replace("_", "-")


@register.filter
def event_label(event_type: str) -> str:
    return EVENT_LABELS.get(event_type, event_type)
