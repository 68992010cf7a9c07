from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"

    def ready(self):
        from runs import kinds
        from runs.api import RunSerializer

        from . import api
        from .services import WorkflowRuns

        kinds.register(WorkflowRuns())
        RunSerializer.extend("workflow", api.run_workflow_field, related="workflow_run")
