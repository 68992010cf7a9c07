"""The schedules API: schedules (owner only), pause, resume, a manual fire, their fires, and a
preview of a cron expression's next fire times."""

from django.core.exceptions import ValidationError as ModelValidationError
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.models import Agent
from runs import openapi
from runs.api import OwnedPrimaryKeyField, OwnedViewSet
from runs.idempotency import idempotent
from runs.models import Thread
from workflows.models import Workflow

from . import cron, services
from .models import Fire, Schedule


class FireSerializer(serializers.ModelSerializer):
    class Meta:
        model = Fire
        fields = ["id", "slot", "manual", "outcome", "reason", "run", "created"]


class ScheduleSerializer(serializers.ModelSerializer):
    workflow = OwnedPrimaryKeyField(
        queryset=Workflow.objects.all(), required=False, allow_null=True
    )
    agent = OwnedPrimaryKeyField(queryset=Agent.objects.all(), required=False, allow_null=True)
    thread = OwnedPrimaryKeyField(queryset=Thread.objects.all(), required=False, allow_null=True)
    inputs = serializers.DictField(required=False, default=dict)
    description = serializers.SerializerMethodField()
    next_fires = serializers.SerializerMethodField()
    last_fire = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "id", "name", "target", "workflow", "inputs", "agent", "prompt", "thread", "cron",
            "timezone", "enabled", "overlap", "starts_at", "ends_at", "disabled_reason",
            "description", "next_fires", "last_fire", "created", "updated",
        ]  # fmt: skip
        read_only_fields = ["disabled_reason"]

    def validate(self, attrs):
        owner = self.context["request"].user
        schedule = self.instance or Schedule(owner=owner)
        for field, value in attrs.items():
            setattr(schedule, field, value)
        if (
            Schedule.objects.filter(owner=owner, name=schedule.name)
            .exclude(pk=schedule.pk)
            .exists()
        ):
            raise serializers.ValidationError(
                {"name": ["You already have a schedule with this name."]}
            )
        try:
            schedule.clean()
        except ModelValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs

    def create(self, validated_data):
        return services.schedule_create(**validated_data)

    def get_description(self, schedule) -> str:
        return cron.describe(schedule.cron)

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_next_fires(self, schedule):
        if not schedule.enabled:
            return []
        return [t.isoformat() for t in cron.next_fires(schedule.cron, schedule.timezone, count=3)]

    @extend_schema_field(FireSerializer(allow_null=True))
    def get_last_fire(self, schedule):
        fire = schedule.fires.first()
        return FireSerializer(fire).data if fire else None


class PreviewSerializer(serializers.Serializer):
    cron = serializers.CharField()
    timezone = serializers.CharField(default="UTC")
    count = serializers.IntegerField(min_value=1, max_value=50, default=5)

    def validate_cron(self, value):
        if errors := cron.validate(value):
            raise serializers.ValidationError(errors)
        return value

    def validate_timezone(self, value):
        if error := cron.validate_timezone(value):
            raise serializers.ValidationError(error)
        return value


@extend_schema_view(
    create=extend_schema(
        responses={
            201: ScheduleSerializer,
            429: openapi.error("`too_many_schedules`: you have as many schedules as allowed."),
        }
    )
)
class ScheduleViewSet(OwnedViewSet):
    queryset = Schedule.objects.none()  # the model, for the schema
    serializer_class = ScheduleSerializer
    related_name = "schedules"

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        services.schedule_pause(schedule=self.get_object())
        return Response(
            ScheduleSerializer(self.get_object(), context=self.get_serializer_context()).data
        )

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        services.schedule_resume(schedule=self.get_object())
        return Response(
            ScheduleSerializer(self.get_object(), context=self.get_serializer_context()).data
        )

    @extend_schema(
        request=None,
        parameters=[openapi.IDEMPOTENCY_KEY],
        responses=openapi.idempotent_start(
            FireSerializer, {}, "The fire of the first request with this Idempotency-Key."
        ),
    )
    @action(detail=True, methods=["post"])
    def trigger(self, request, pk=None):
        schedule = self.get_object()
        return idempotent(request, lambda: self._fire(schedule))

    def _fire(self, schedule):
        fire = services.schedule_fire(schedule_id=schedule.pk, manual=True)
        return Response(FireSerializer(fire).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=FireSerializer(many=True))
    @action(detail=True, methods=["get"])
    def fires(self, request, pk=None):
        page = self.paginate_queryset(self.get_object().fires.all())
        return self.get_paginated_response(FireSerializer(page, many=True).data)

    @extend_schema(
        request=PreviewSerializer,
        examples=[
            OpenApiExample(
                "Weekdays at 9",
                {"cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris"},
                request_only=True,
            )
        ],
        responses=inline_serializer(
            "Preview",
            {
                "description": serializers.CharField(),
                "next": serializers.ListField(child=serializers.DateTimeField()),
            },
        ),
    )
    @action(detail=False, methods=["post"])
    def preview(self, request):
        data = PreviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        expression, zone, count = (data.validated_data[k] for k in ("cron", "timezone", "count"))
        fires = cron.next_fires(expression, zone, count=count)
        return Response(
            {"description": cron.describe(expression), "next": [t.isoformat() for t in fires]}
        )
