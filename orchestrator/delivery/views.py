"""Settings → Callbacks (the signing secret, shown once) and Settings → Notifications."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from ..services import ServiceError
from ..views import login_required, page_or_fragment, post_only, redirect_after_write
from . import selectors, services
from .dispatch import email_configured
from .forms import NotificationsForm


def _callbacks_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "secret": selectors.callback_secret_for_user(request.user), "raw_secret": None,
            "deliveries": selectors.recent_deliveries_for_user(request.user),
            "public_url": settings.CORTEX_PUBLIC_URL, **extra}


@login_required
@require_GET
def settings_callbacks(request: HttpRequest) -> HttpResponse:
    return render(request, "delivery/callbacks.html", _callbacks_context(request))


@login_required
@post_only("settings-callbacks")
def callback_secret_rotate(request: HttpRequest) -> HttpResponse:
    raw = services.callback_secret_rotate(user=request.user)
    # The raw value exists only in this response: it is stored encrypted and never shown again.
    response = page_or_fragment(request, "delivery/callbacks.html", _callbacks_context(request, raw_secret=raw),
                                fragment="secret-panel")
    response["Cache-Control"] = "no-store"
    return response


def _notifications_context(request: HttpRequest, form: NotificationsForm, chosen: Any) -> dict[str, Any]:
    return {"section": "settings", "form": form, "chosen": chosen, "email_configured": email_configured(),
            "public_url": settings.CORTEX_PUBLIC_URL, "public_url_is_set": services.public_url_is_set(),
            "has_secret": selectors.callback_secret_for_user(request.user) is not None}


@login_required
@require_http_methods(["GET", "POST"])
def settings_notifications(request: HttpRequest) -> HttpResponse:
    chosen = selectors.notification_settings_for_user(request.user)
    if request.method == "GET":
        form = NotificationsForm.for_settings(chosen)
        return render(request, "delivery/notifications.html", _notifications_context(request, form, chosen))
    form = NotificationsForm.for_settings(chosen, request.POST)
    if form.is_valid():
        try:
            services.notifications_update(user=request.user, **form.arguments())
        except ServiceError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Notification settings saved.")
            return redirect_after_write(request, reverse("settings-notifications"))
    return render(request, "delivery/notifications.html", _notifications_context(request, form, chosen), status=400)
