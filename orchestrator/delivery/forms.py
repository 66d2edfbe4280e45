"""The notification settings form: it parses what a person typed; the services decide."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import Event, NotificationSettings


class NotificationsForm(forms.Form):
    events = forms.MultipleChoiceField(
        choices=[(event.value, event.label.capitalize()) for event in Event], required=False,
        widget=forms.CheckboxSelectMultiple, label="Tell me when")
    email_enabled = forms.BooleanField(required=False, label="Send an e-mail")
    email_address = forms.EmailField(required=False, label="E-mail address")
    ntfy_enabled = forms.BooleanField(required=False, label="Publish to ntfy")
    ntfy_server = forms.URLField(required=False, max_length=500, label="ntfy server",
                                 widget=forms.URLInput(attrs={"placeholder": "https://ntfy.sh"}))
    ntfy_topic = forms.CharField(required=False, max_length=64, label="Topic",
                                 help_text="Letters, digits, - or _. Anyone who knows a topic on a public server "
                                           "can read it: pick one that is hard to guess, or use a token.")
    ntfy_token = forms.CharField(required=False, max_length=200, label="Access token (optional)",
                                 widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
                                 help_text="Stored encrypted and never shown again. Leave empty to keep the stored one.")
    ntfy_token_remove = forms.BooleanField(required=False, label="Remove the stored token")
    webhook_enabled = forms.BooleanField(required=False, label="POST to a webhook")
    webhook_url = forms.URLField(required=False, max_length=500, label="Webhook URL",
                                 help_text="Signed like callbacks, with your callback secret.")
    browser_enabled = forms.BooleanField(
        required=False, label="Show a browser notification",
        help_text="While a Cortex page is open in this browser, and once you allow it.")

    @classmethod
    def for_settings(cls, chosen: NotificationSettings, data: Any = None) -> NotificationsForm:
        initial = {"events": chosen.events, "email_enabled": chosen.email_enabled,
                   "email_address": chosen.email_address, "ntfy_enabled": chosen.ntfy_enabled,
                   "ntfy_server": chosen.ntfy_server, "ntfy_topic": chosen.ntfy_topic,
                   "webhook_enabled": chosen.webhook_enabled, "webhook_url": chosen.webhook_url,
                   "browser_enabled": chosen.browser_enabled}
        return cls(data, initial=initial)

    def arguments(self) -> dict[str, Any]:
        """The service's arguments: an empty token field keeps the stored token."""
        data = dict(self.cleaned_data)
        remove = data.pop("ntfy_token_remove")
        token = data.pop("ntfy_token")
        data["ntfy_token"] = "" if remove else (token or None)
        return data
