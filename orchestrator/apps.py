from contextlib import suppress
from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Cortex orchestrator"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete

        from . import dashboard
        from .models import Job

        # Importing a tool module registers its tools.
        from .tools import builtin  # noqa: F401

        user_logged_out.connect(_close_session_streams, dispatch_uid="cortex-close-session-streams")
        post_delete.connect(dashboard.forget_days_of, sender=Job, dispatch_uid="cortex-forget-activity-days")

        # The provider SDKs take seconds to import: inside the running event loop that would stall
        # every job's heartbeat until their leases ran out. The providers of the configured models
        # are imported here, at start-up; any other (a model profile's) is imported by the first
        # job that uses it, on a thread (`providers.loaded`), so a process never holds the tens of
        # MiB of an SDK that none of its jobs uses.
        from . import providers

        for model in (settings.CORTEX_ORCHESTRATOR_MODEL, settings.CORTEX_CHAT_MODEL):
            # An unknown provider fails the jobs that use it, with that message; not start-up.
            with suppress(providers.ProviderUnknown):
                providers.load(model)

        for module in settings.CORTEX_TOOL_MODULES:
            try:
                import_module(module)
            except ImportError as error:
                raise ImproperlyConfigured(f"CORTEX_TOOL_MODULES: cannot import {module!r}: {error}") from error


def _close_session_streams(sender, request, user, **kwargs) -> None:
    """Signing out ends the session's open streams too, not only its pages."""
    from .streams import close_session_streams

    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        close_session_streams(session_key)
