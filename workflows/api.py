"""The workflows API: definitions (owner only), their runs, and the steps of a run."""

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from runs import openapi
from runs.api import OwnedPrimaryKeyField, OwnedViewSet, RunSerializer
from runs.idempotency import idempotent
from runs.models import Run, Thread

from .definition import SCHEMA, validate
from .models import StepRun, Workflow
from .services import workflow_start


class WorkflowSerializer(serializers.ModelSerializer):
    definition = serializers.JSONField()

    class Meta:
        model = Workflow
        fields = ["id", "name", "description", "definition", "version", "created", "updated"]
        read_only_fields = ["version"]

    def validate_name(self, value):
        owner = self.context["request"].user
        taken = Workflow.objects.filter(owner=owner, name=value)
        if taken.exclude(pk=getattr(self.instance, "pk", None)).exists():
            raise serializers.ValidationError("You already have a workflow with this name.")
        return value

    def validate_definition(self, value):
        agent_ids = set(self.context["request"].user.agents.values_list("pk", flat=True))
        errors = validate(value, agent_ids=agent_ids)
        if errors:
            raise serializers.ValidationError(errors)
        return value


class WorkflowStartSerializer(serializers.Serializer):
    inputs = serializers.DictField(required=False, default=dict)
    thread = OwnedPrimaryKeyField(queryset=Thread.objects.all(), required=False, allow_null=True)
    webhook = serializers.URLField(
        max_length=500, required=False,
        help_text="a URL to POST the run's end to (run.completed, run.failed, run.stopped),"
        " signed with your one-off signing secret (/api/webhooks/signing-secret/)",
    )  # fmt: skip


class StepRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepRun
        fields = ["step", "index", "status", "output", "error", "reused", "started", "finished"]


def run_workflow_field():
    """A run's `workflow` (runs' RunSerializer shows it: workflows/apps.py); null for a run of
    another kind."""
    return serializers.PrimaryKeyRelatedField(
        source="workflow_run.workflow", read_only=True, allow_null=True
    )


class RunStepsView(generics.ListAPIView):
    """The steps of one of the user's runs, in order: /api/runs/<id>/steps/ (none for a run
    that is not a workflow's)."""

    serializer_class = StepRunSerializer
    queryset = StepRun.objects.none()  # the model, for the schema

    def get_queryset(self):
        run = get_object_or_404(self.request.user.runs, pk=self.kwargs["pk"])
        return run.steps.all()


ADD_ONE = {
    "inputs": [{"name": "a", "type": "number", "required": True}],
    "steps": [
        {"id": "sum", "type": "tool", "tool": "calculator",
         "arguments": {"expression": "{{ inputs.a }} + 1"}},
        {"id": "explain", "type": "agent", "prompt": "Explain {{ steps.sum.output }}"},
    ],
}  # fmt: skip


@extend_schema_view(
    create=extend_schema(
        examples=[
            OpenApiExample("Add one", {"name": "Add one", "definition": ADD_ONE}, request_only=True)
        ]
    )
)
class WorkflowViewSet(OwnedViewSet):
    queryset = Workflow.objects.none()  # the model, for the schema
    serializer_class = WorkflowSerializer
    related_name = "workflows"

    def perform_update(self, serializer):
        # every change makes a new version; runs keep the definition they started with
        serializer.instance.save_new_version(**serializer.validated_data)

    @extend_schema(
        summary="The JSON Schema of a definition",
        description="For editors: what a definition may hold (docs/workflows.md). Saving one"
        " also checks what a schema cannot say, such as references to earlier steps.",
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, "A JSON Schema, draft 2020-12.")},
        auth=[],  # no credentials, so no 401 or 429 either
    )
    # Public, like /api/schema/: an editor fetches it without credentials.
    @action(
        detail=False, url_path="schema", permission_classes=[AllowAny], authentication_classes=[]
    )
    def definition_schema(self, request):  # not `schema`: DRF's views have that attribute
        return Response(SCHEMA)

    @extend_schema(methods=["GET"], responses=RunSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=WorkflowStartSerializer,
        parameters=[openapi.IDEMPOTENCY_KEY],
        responses=openapi.idempotent_start(RunSerializer, openapi.RUN_START_ERRORS),
        examples=[OpenApiExample("Add one to 20", {"inputs": {"a": 20}}, request_only=True)],
    )
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        workflow = self.get_object()
        if request.method == "GET":
            runs = Run.objects.filter(workflow_run__workflow=workflow)
            page = self.paginate_queryset(runs.select_related(*RunSerializer.related()))
            return self.get_paginated_response(RunSerializer(page, many=True).data)
        return idempotent(request, lambda: self._start(request, workflow))

    def _start(self, request, workflow):
        data = WorkflowStartSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        run = workflow_start(user=request.user, workflow=workflow, **data.validated_data)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
