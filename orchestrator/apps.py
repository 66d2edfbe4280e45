from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Cortex orchestrator"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        # Importing a tool module registers its tools.
        from .tools import builtin  # noqa: F401

        user_logged_out.connect(_close_session_streams, dispatch_uid="cortex-close-session-streams")

        # The provider SDKs take seconds to import. Imported here, at start-up, rather than by the
        # first job that needs one: inside the running event loop that would stall every job's
        # heartbeat until their leases ran out.
        from .providers import anthropic, gemini, openai_compat  # noqa: F401

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
