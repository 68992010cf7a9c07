from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"

    def ready(self):
        from . import gauges, receivers  # noqa: F401  (they declare their metrics)

        receivers.connect()
