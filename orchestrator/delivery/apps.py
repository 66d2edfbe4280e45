from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "orchestrator.delivery"
    label = "delivery"
    verbose_name = "Cortex callbacks and notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the periodic work (deliveries, expiring confirmations) with the executor.
        from . import periodic  # noqa: F401
