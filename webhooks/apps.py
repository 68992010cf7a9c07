from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"

    def ready(self):
        from runs import signals

        from . import services, tasks  # noqa: F401  (tasks: the delivery and the sweep)

        signals.run_starting.connect(services.check_start, dispatch_uid="webhooks")
        signals.run_started.connect(services.remember_webhook, dispatch_uid="webhooks")
        signals.run_ended.connect(services.on_run_changed, dispatch_uid="webhooks-ended")
        signals.run_waiting.connect(services.on_run_changed, dispatch_uid="webhooks-waiting")
