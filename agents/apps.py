from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self):
        from . import eventstream, signals  # noqa: F401

        eventstream.install_resilient_listener()
