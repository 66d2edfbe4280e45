"""Reads for callbacks and notifications, each scoped to one person."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from ..models import Job
from .models import CallbackSecret, Delivery, NotificationSettings


def deliveries_for_job(user: AbstractBaseUser, job: Job) -> QuerySet[Delivery]:
    return Delivery.objects.filter(user=user, job=job).order_by("created_at")


def callback_secret_for_user(user: AbstractBaseUser) -> CallbackSecret | None:
    return CallbackSecret.objects.filter(user=user).first()


def notification_settings_for_user(user: AbstractBaseUser) -> NotificationSettings:
    """The person's settings, or unsaved defaults (nothing on) when they never chose."""
    return NotificationSettings.objects.filter(user=user).first() or NotificationSettings(user=user)


def recent_deliveries_for_user(user: AbstractBaseUser, *, limit: int = 20) -> QuerySet[Delivery]:
    return Delivery.objects.filter(user=user).select_related("job").order_by("-created_at")[:limit]
