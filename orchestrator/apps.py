from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Cortex orchestrator"

    def ready(self) -> None:
        # Importing a tool module registers its tools.
        from .tools import builtin  # noqa: F401

        # The provider SDKs take seconds to import. Imported here, at start-up, rather than by the
        # first job that needs one: inside the running event loop that would stall every job's
        # heartbeat until their leases ran out.
        from .providers import anthropic, gemini, openai_compat  # noqa: F401

        for module in settings.CORTEX_TOOL_MODULES:
            try:
                import_module(module)
            except ImportError as error:
                raise ImproperlyConfigured(f"CORTEX_TOOL_MODULES: cannot import {module!r}: {error}") from error
