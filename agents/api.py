"""The agents API: agents, and threads as conversations with one (their messages, their runs,
and starting an agent run on one). Runs themselves are the runs app's API."""

from django.conf import settings
from django.db.models import OuterRef, Subquery
from drf_spectacular.utils import (
    OpenApiExample,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import openapi
from runs.api import (
    FollowUpSerializer,
    MessageSerializer,
    OwnedPrimaryKeyField,
    OwnedViewSet,
    RaceSafeWrites,
    RunSerializer,
    within_message_limit,
)
from runs.idempotency import idempotent
from runs.models import FollowUp, Run, Thread

from . import tools
from .models import Agent, McpServer, Provider, ThreadAgent
from .services import agent_start


class DemoConfigSerializer(serializers.Serializer):
    words = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    delay_ms = serializers.IntegerField(min_value=0, max_value=60_000, required=False)


class AgentSerializer(serializers.ModelSerializer):
    provider = OwnedPrimaryKeyField(
        queryset=Provider.objects.all(), required=False, allow_null=True,
        help_text="a provider's id, or null for the default one (LLM_BASE_URL, LLM_API_KEY)",
    )  # fmt: skip
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        min_value=1, max_value=1_000_000, required=False, allow_null=True,
        help_text="the most output tokens a model turn may take",
    )  # fmt: skip
    tools = serializers.ListField(child=serializers.CharField(), required=False)
    mcp_servers = OwnedPrimaryKeyField(
        many=True, queryset=McpServer.objects.all(), required=False,
        help_text="ids of MCP servers whose tools it may call",
    )  # fmt: skip
    approve_tools = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=200, required=False,
        help_text='tools (as the model names them: `<server>__<tool>` for an MCP one) whose'
        ' every call a person approves first; "*" for all',
    )  # fmt: skip
    config = serializers.DictField(required=False)

    class Meta:
        model = Agent
        fields = [
            "id", "name", "instructions", "provider", "model", "temperature", "max_tokens",
            "tools", "mcp_servers", "approve_tools", "config", "created", "updated",
        ]  # fmt: skip

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

    def validate_approve_tools(self, value):
        return list(dict.fromkeys(value))

    def validate_mcp_servers(self, value):
        servers = list(dict.fromkeys(value))
        if len(servers) > settings.MCP_SERVERS_MAX_PER_AGENT:
            raise serializers.ValidationError(
                f"At most {settings.MCP_SERVERS_MAX_PER_AGENT} servers (MCP_SERVERS_MAX_PER_AGENT)."
            )
        return servers

    def validate(self, data):
        provider = data.get("provider", getattr(self.instance, "provider", None))
        model = data.get("model", getattr(self.instance, "model", "demo"))
        if not model and not (provider and provider.default_model):
            raise serializers.ValidationError(
                {"model": "Name a model: the provider has no default model."}
            )
        return data

    def validate_config(self, value):
        demo = DemoConfigSerializer(data=value.get("demo", {}))
        if not demo.is_valid():
            raise serializers.ValidationError({"demo": demo.errors})
        return value


def run_agent_field():
    """A run's `agent` (runs' RunSerializer shows it: agents/apps.py)."""
    return serializers.PrimaryKeyRelatedField(
        source="agent_link.agent", read_only=True, allow_null=True
    )


class ThreadSerializer(serializers.ModelSerializer):
    agent = OwnedPrimaryKeyField(
        source="agent_link.agent", queryset=Agent.objects.all(), required=False, allow_null=True
    )
    active_run = serializers.UUIDField(read_only=True, allow_null=True)

    class Meta:
        model = Thread
        fields = ["id", "title", "agent", "active_run", "created", "updated"]


class RunStartSerializer(serializers.Serializer):
    message = serializers.CharField()
    agent = OwnedPrimaryKeyField(queryset=Agent.objects.all(), required=False, allow_null=True)
    if_busy = serializers.ChoiceField(
        ["reject", "interrupt", "enqueue"], default="reject",
        help_text="when the thread has an active run (or queued messages): refuse (409), stop it"
        " first (and drop what is queued), or queue the message to start when the runs before it"
        " have ended (202 with the follow-up; RUN_FOLLOW_UPS_MAX per thread, 429 beyond)",
    )  # fmt: skip

    webhook = serializers.URLField(
        max_length=500, required=False,
        help_text="a URL to POST the run's end to (run.completed, run.failed, run.stopped),"
        " signed with your one-off signing secret (/api/webhooks/signing-secret/)",
    )  # fmt: skip

    def validate_message(self, value):
        return within_message_limit(value)

    def validate(self, data):
        if data.get("webhook") and data["if_busy"] == "enqueue":
            # a queued message keeps no start options (runs.lifecycle._follow_up)
            raise serializers.ValidationError(
                {"webhook": 'A one-off webhook cannot be given with "if_busy": "enqueue".'}
            )
        return data


class AgentViewSet(OwnedViewSet):
    queryset = Agent.objects.none()  # the model, for the schema; get_queryset() has the user's
    serializer_class = AgentSerializer
    related_name = "agents"

    def get_queryset(self):
        return super().get_queryset().prefetch_related("mcp_servers")


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
        threads = self.request.user.threads.select_related("agent_link")
        return threads.annotate(active_run=Subquery(active))

    def perform_create(self, serializer):
        user = self.request.user
        link = serializer.validated_data.pop("agent_link", None)
        thread = serializer.save(owner=user)
        agent = link["agent"] if link else user.agents.first()
        thread.agent_link = ThreadAgent.objects.create(thread=thread, agent=agent)
        # the queryset's annotation is missing from a fresh instance: the answer would lack it
        thread.active_run = None

    def perform_update(self, serializer):
        link = serializer.validated_data.pop("agent_link", None)
        thread = serializer.save()
        if link is not None:
            thread.agent_link, _ = ThreadAgent.objects.update_or_create(
                thread=thread, defaults={"agent": link["agent"]}
            )

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
        parameters=[openapi.IDEMPOTENCY_KEY],
        responses=openapi.idempotent_start(
            PolymorphicProxySerializer(
                component_name="RunOrFollowUp",
                serializers=[RunSerializer, FollowUpSerializer],
                resource_type_field_name=None,
            ),
            openapi.QUEUEING_START_ERRORS,
        ),
        description="202 with the run; or, when the message was queued behind the thread's"
        ' active run (`"if_busy": "enqueue"`), with the follow-up (`follow_up`, `position`):'
        " its run starts when the runs before it end, announced on the thread's stream"
        " (`run.started` with its `follow_up`) and shown by `GET .../follow-ups/`.",
        examples=[
            OpenApiExample(
                "A question", {"message": "Please calculate 2 * (3 + 4)"}, request_only=True
            ),
            OpenApiExample(
                "After the current reply",
                {"message": "And in French?", "if_busy": "enqueue"},
                request_only=True,
            ),
        ],
    )
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        thread = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(thread.runs.select_related(*RunSerializer.related()))
            return self.get_paginated_response(RunSerializer(page, many=True).data)
        return idempotent(request, lambda: self._start(request, thread))

    def _start(self, request, thread):
        data = RunStartSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        started = agent_start(user=request.user, thread=thread, **data.validated_data)
        if isinstance(started, FollowUp):
            return Response(FollowUpSerializer(started).data, status=status.HTTP_202_ACCEPTED)
        return Response(RunSerializer(started).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=FollowUpSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="follow-ups")
    def follow_ups(self, request, pk=None):
        """The messages queued on the thread that have not started yet, the next first."""
        thread = self.get_object()
        page = self.paginate_queryset(thread.follow_ups.pending())
        return self.get_paginated_response(FollowUpSerializer(page, many=True).data)
