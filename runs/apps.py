from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"

    def ready(self):
        from . import eventstream, tasks  # noqa: F401  (tasks: the engine's Celery tasks)

        eventstream.install_resilient_listener()
