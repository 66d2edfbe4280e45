"""The API for callbacks and notifications: a job's deliveries, the callback secret (its value
answered once, when it is made) and the person's notification settings. Same tokens, same errors."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema
from ninja.responses import Status
from pydantic import ConfigDict, Field

from .. import selectors as job_selectors
from ..services import NotFound
from . import selectors, services
from .models import Delivery, Event, NotificationSettings

router = Router(tags=["callbacks and notifications"])


class Detail(Schema):
    detail: str


ERRORS = {400: Detail, 401: Detail, 404: Detail}


class DeliveryOut(Schema):
    id: str
    channel: str
    event: str
    target: str
    state: str
    attempts: int
    response_status: int | None
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


def _delivery(delivery: Delivery) -> dict:
    return {"id": str(delivery.pk), "channel": delivery.channel, "event": delivery.event, "target": delivery.target,
            "state": delivery.state, "attempts": delivery.attempts, "response_status": delivery.response_status,
            "last_error": delivery.last_error, "created_at": delivery.created_at,
            "next_attempt_at": delivery.next_attempt_at if delivery.state == Delivery.State.PENDING else None,
            "delivered_at": delivery.delivered_at}


@router.get("/orchestrate/{job_id}/deliveries", response={200: list[DeliveryOut], **ERRORS},
            summary="A job's callbacks and notifications, and how each went")
def job_deliveries(request: HttpRequest, job_id: str):
    job = job_selectors.job_for_user(request.user, job_id)
    return [_delivery(delivery) for delivery in selectors.deliveries_for_job(request.user, job)]


class SecretOut(Schema):
    prefix: str
    rotated_at: datetime


class NewSecretOut(SecretOut):
    secret: str = Field(description="The signing secret: shown this once, never again.")


@router.get("/callbacks/secret", response={200: SecretOut, **ERRORS}, summary="Which callback secret is in use")
def callback_secret(request: HttpRequest):
    secret = selectors.callback_secret_for_user(request.user)
    if secret is None:
        raise NotFound("you have no callback secret yet; POST here to create one")
    return {"prefix": secret.prefix, "rotated_at": secret.rotated_at}


@router.post("/callbacks/secret", response={201: NewSecretOut, **ERRORS},
             summary="Create or rotate the callback secret (the new value is answered once)")
def callback_secret_rotate(request: HttpRequest, response: HttpResponse):
    raw = services.callback_secret_rotate(user=request.user)
    secret = selectors.callback_secret_for_user(request.user)
    response["Cache-Control"] = "no-store"
    return Status(201, {"secret": raw, "prefix": secret.prefix, "rotated_at": secret.rotated_at})


class NotificationsBase(Schema):
    events: list[Literal["job.awaiting_confirmation", "job.failed", "job.finished"]] = []
    email_enabled: bool = False
    email_address: str = Field("", max_length=254)
    ntfy_enabled: bool = False
    ntfy_server: str = Field("", max_length=500)
    ntfy_topic: str = Field("", max_length=64)
    webhook_enabled: bool = False
    webhook_url: str = Field("", max_length=500)
    browser_enabled: bool = False


class NotificationsIn(NotificationsBase):
    model_config = ConfigDict(extra="forbid")

    ntfy_token: str | None = Field(None, max_length=200,
                                   description='Omit (or null) to keep the stored token; "" removes it.')


class NotificationsOut(NotificationsBase):
    has_ntfy_token: bool


def _notifications(chosen: NotificationSettings) -> dict:
    return {"events": [event for event in chosen.events if event in Event.values],
            "email_enabled": chosen.email_enabled, "email_address": chosen.email_address,
            "ntfy_enabled": chosen.ntfy_enabled, "ntfy_server": chosen.ntfy_server, "ntfy_topic": chosen.ntfy_topic,
            "has_ntfy_token": bool(chosen.ntfy_token_encrypted), "webhook_enabled": chosen.webhook_enabled,
            "webhook_url": chosen.webhook_url, "browser_enabled": chosen.browser_enabled}


@router.get("/notifications", response={200: NotificationsOut, **ERRORS}, summary="Your notification settings")
def notifications(request: HttpRequest):
    return _notifications(selectors.notification_settings_for_user(request.user))


@router.put("/notifications", response={200: NotificationsOut, **ERRORS}, summary="Change your notification settings")
def notifications_update(request: HttpRequest, payload: NotificationsIn):
    chosen = services.notifications_update(user=request.user, **payload.dict())
    return _notifications(chosen)
