"""The JSON API: agents, threads, their messages, and runs (start, get, list, stop)."""

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import openapi, tools
from .errors import ServiceConflict
from .lifecycle import run_retry, run_start, run_stop
from .models import Agent, Message, Run, Thread
from .parsers import integer, object_id


class OwnedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """A reference to one of the requesting user's objects; others' look like unknown ids."""

    def get_queryset(self):
        return super().get_queryset().filter(owner=self.context["request"].user)

    def to_internal_value(self, data):
        # checked before the query, which would take 1.5 as id 1
        number = integer(data)
        if number is None:
            self.fail("incorrect_type", data_type=type(data).__name__)
        if object_id(number) is None:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(number)


class DemoConfigSerializer(serializers.Serializer):
    words = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    delay_ms = serializers.IntegerField(min_value=0, max_value=60_000, required=False)


class AgentSerializer(serializers.ModelSerializer):
    tools = serializers.ListField(child=serializers.CharField(), required=False)
    config = serializers.DictField(required=False)

    class Meta:
        model = Agent
        fields = ["id", "name", "instructions", "model", "tools", "config", "created", "updated"]

    def validate_name(self, value):
        owner = self.context["request"].user
        taken = Agent.objects.filter(owner=owner, name=value).exclude(
            pk=getattr(self.instance, "pk", None)
        )
        if taken.exists():
            raise serializers.ValidationError("You already have an agent with this name.")
        return value

    def validate_tools(self, value):
        unknown = sorted(set(value) - set(tools.names()))
        if unknown:
            raise serializers.ValidationError(
                f"Unknown tools: {', '.join(unknown)}. Known: {', '.join(tools.names())}."
            )
        return list(dict.fromkeys(value))

    def validate_config(self, value):
        demo = DemoConfigSerializer(data=value.get("demo", {}))
        if not demo.is_valid():
            raise serializers.ValidationError({"demo": demo.errors})
        return value


class ThreadSerializer(serializers.ModelSerializer):
    agent = OwnedPrimaryKeyField(queryset=Agent.objects.all(), required=False, allow_null=True)
    active_run = serializers.UUIDField(read_only=True, allow_null=True)

    class Meta:
        model = Thread
        fields = ["id", "title", "agent", "active_run", "created", "updated"]


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id", "run", "role", "content", "tool_calls", "tool_call_id", "name", "is_error",
            "position", "created",
        ]  # fmt: skip


class RunSerializer(serializers.ModelSerializer):
    events_url = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id", "thread", "agent", "workflow", "retry_of", "status", "trigger", "error",
            "attempt", "stop_requested",
            "input_tokens", "output_tokens", "created", "started", "finished", "events_url",
        ]  # fmt: skip

    def get_events_url(self, run) -> str:
        return f"/api/runs/{run.pk}/events/"


class RunStartSerializer(serializers.Serializer):
    message = serializers.CharField()
    agent = OwnedPrimaryKeyField(queryset=Agent.objects.all(), required=False, allow_null=True)
    if_busy = serializers.ChoiceField(["reject", "interrupt"], default="reject")

    def validate_message(self, value):
        size = len(value.encode())
        if size > settings.RUN_MESSAGE_MAX_BYTES:
            raise serializers.ValidationError(
                f"Ensure this field has no more than {settings.RUN_MESSAGE_MAX_BYTES} bytes"
                f" (it has {size})."
            )
        return value


class RunFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(Run.Status.choices, required=False)
    thread = serializers.IntegerField(required=False)


class RaceSafeWrites:
    """Creates and updates that race a delete answer as if they came one after the other, never
    500. An update locks its row (a delete waits for it, or it finds the object gone: 404), and
    a write whose referenced object is deleted meanwhile (the foreign key fails at commit) or
    that loses a race for a unique name is a 409 the client can retry."""

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        updating = self.action in ("update", "partial_update")
        return queryset.select_for_update() if updating else queryset

    def create(self, request, *args, **kwargs):
        return self._race_safe(super().create, request, *args, **kwargs)

    def update(self, request, *args, **kwargs):
        return self._race_safe(super().update, request, *args, **kwargs)

    def _race_safe(self, write, *args, **kwargs):
        try:
            with transaction.atomic():
                return write(*args, **kwargs)
        except IntegrityError:
            raise ServiceConflict(
                "Something this refers to changed or was deleted meanwhile; try again."
            ) from None


class OwnedViewSet(RaceSafeWrites, viewsets.ModelViewSet):
    """The requesting user's objects (`user.<related_name>`); anyone else's are 404s."""

    related_name = None

    def get_queryset(self):
        return getattr(self.request.user, self.related_name).all()

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class AgentViewSet(OwnedViewSet):
    queryset = Agent.objects.none()  # the model, for the schema; get_queryset() has the user's
    serializer_class = AgentSerializer
    related_name = "agents"


@extend_schema_view(
    destroy=extend_schema(responses={204: None, 409: openapi.THREAD_BUSY}),
)
class ThreadViewSet(
    RaceSafeWrites,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Thread.objects.none()
    serializer_class = ThreadSerializer

    def get_queryset(self):
        active = Run.objects.active_on(OuterRef("pk")).values("pk")[:1]
        return self.request.user.threads.annotate(active_run=Subquery(active))

    def perform_create(self, serializer):
        user = self.request.user
        if "agent" in serializer.validated_data:
            serializer.save(owner=user)
        else:
            serializer.save(owner=user, agent=user.agents.first())
        # the queryset's annotation is missing from a fresh instance: the answer would lack it
        serializer.instance.active_run = None

    def perform_destroy(self, thread):
        thread.delete_if_idle()

    @extend_schema(responses=MessageSerializer(many=True))
    @action(detail=True, methods=["get"])
    def messages(self, request, pk=None):
        thread = self.get_object()
        page = self.paginate_queryset(thread.messages.order_by("position"))
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(methods=["GET"], responses=RunSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=RunStartSerializer,
        responses={202: RunSerializer, **openapi.RUN_START_ERRORS},
        examples=[
            OpenApiExample(
                "A question", {"message": "Please calculate 2 * (3 + 4)"}, request_only=True
            )
        ],
    )
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        thread = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(thread.runs.all())
            return self.get_paginated_response(RunSerializer(page, many=True).data)
        data = RunStartSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        run = run_start(user=request.user, thread=thread, **data.validated_data)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(list=extend_schema(parameters=[RunFilterSerializer]))
class RunViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Run.objects.none()
    serializer_class = RunSerializer

    def get_queryset(self):
        runs = self.request.user.runs.all()
        if self.action == "list":
            filters = RunFilterSerializer(data=self.request.query_params)
            filters.is_valid(raise_exception=True)
            runs = runs.filter(**filters.validated_data)
        return runs

    @extend_schema(request=None, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        run = self.get_object()
        run_stop(run=run)
        run.refresh_from_db()
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        responses={
            202: RunSerializer,
            409: openapi.error(
                "`conflict`: only a failed workflow run can be retried; `thread_busy`: its thread"
                " has an active run."
            ),
            429: openapi.TOO_MANY_RUNS,
            503: openapi.QUEUE_UNAVAILABLE,
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        run = run_retry(run=self.get_object())
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["get"])
    def steps(self, request, pk=None):
        from workflows.api import StepRunSerializer

        page = self.paginate_queryset(self.get_object().steps.all())
        return self.get_paginated_response(StepRunSerializer(page, many=True).data)
