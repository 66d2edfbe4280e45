from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Cortex orchestrator"

    def ready(self) -> None:
        # Importing the built-in tools registers them.
        from .tools import builtin  # noqa: F401
