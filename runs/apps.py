from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"

    def ready(self):
        from . import eventstream, idempotency, signals, tasks  # noqa: F401  (tasks: Celery's)

        eventstream.install_resilient_listener()
        signals.run_started.connect(idempotency.link_run, dispatch_uid="idempotency.link_run")
