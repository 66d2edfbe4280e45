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

        for module in settings.CORTEX_TOOL_MODULES:
            try:
                import_module(module)
            except ImportError as error:
                raise ImproperlyConfigured(f"CORTEX_TOOL_MODULES: cannot import {module!r}: {error}") from error
