from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"

    def ready(self):
        from . import gauges, receivers, webhooks  # noqa: F401  (they declare their metrics)

        receivers.connect()
        webhooks.connect()
