from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"

    def ready(self):
        from runs import kinds
        from runs.api import RunSelectionSerializer, RunSerializer, id_filter

        from . import api
        from .services import WorkflowRuns

        kinds.register(WorkflowRuns())
        RunSerializer.extend("workflow", api.run_workflow_field, related="workflow_run")
        RunSelectionSerializer.extend(
            "workflow", lambda: id_filter(help_text="a workflow's id"),
            lookup="workflow_run__workflow",
        )  # fmt: skip
