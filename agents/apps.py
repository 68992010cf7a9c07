from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self):
        from runs import kinds
        from runs.api import RunSelectionSerializer, RunSerializer, id_filter

        from . import api, signals  # noqa: F401  (the demo agent of a new user)
        from .llm import retry  # noqa: F401  (declares relay_model_retries_total: runs.metrics)
        from .services import AgentRuns

        kinds.register(AgentRuns())
        RunSerializer.extend("agent", api.run_agent_field, related="agent_link")
        RunSelectionSerializer.extend(
            "agent", lambda: id_filter(help_text="an agent's id"), lookup="agent_link__agent"
        )
