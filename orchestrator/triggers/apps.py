from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "orchestrator.triggers"
    label = "triggers"
    verbose_name = "Cortex schedules and webhooks"

    def ready(self) -> None:
        # Registers the executor's periodic tick that fires due schedules.
        from . import periodic  # noqa: F401
