"""The workflows API: definitions (owner only) and their runs."""

from django.db.models import F
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agents import services
from agents.api import OwnedPrimaryKeyField, OwnedViewSet, RunSerializer
from agents.models import Thread

from .definition import validate
from .models import StepRun, Workflow


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


class StepRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepRun
        fields = ["step", "index", "status", "output", "error", "reused", "started", "finished"]


class WorkflowViewSet(OwnedViewSet):
    serializer_class = WorkflowSerializer
    related_name = "workflows"

    def perform_update(self, serializer):
        # every change makes a new version; runs keep the definition they started with
        workflow = serializer.save(version=F("version") + 1)
        workflow.refresh_from_db(fields=["version"])

    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        workflow = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(workflow.runs.all())
            return self.get_paginated_response(RunSerializer(page, many=True).data)
        data = WorkflowStartSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        run = services.workflow_start(user=request.user, workflow=workflow, **data.validated_data)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
