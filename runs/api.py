"""The runs API (list, get, stop, retry; the event stream is runs/events.py), and what every app's
API shares: the owner-only view set, references to the user's own objects, race-safe writes."""

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import openapi
from .errors import ServiceConflict
from .lifecycle import run_retry, run_stop
from .models import Message, Run
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


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id", "run", "role", "content", "tool_calls", "tool_call_id", "name", "is_error",
            "position", "created",
        ]  # fmt: skip


class RunSerializer(serializers.ModelSerializer):
    """A run as the API shows it. The apps that keep rows beside runs add their fields (a run's
    agent, its workflow) with `extend()` from their ready(): every run shows them all."""

    events_url = serializers.SerializerMethodField()
    extensions = {}  # field name -> (a function making the field, the relation it reads)

    class Meta:
        model = Run
        fields = [
            "id", "kind", "thread", "retry_of", "status", "trigger", "error", "attempt",
            "stop_requested", "input_tokens", "output_tokens", "created", "started", "finished",
            "events_url",
        ]  # fmt: skip

    @classmethod
    def extend(cls, name, make_field, *, related):
        """Show the field `make_field()` makes as `name` on every run; `related` is the
        one-to-one relation it reads, fetched with the runs a list shows."""
        cls.extensions[name] = (make_field, related)

    @classmethod
    def related(cls):
        return [related for _, related in cls.extensions.values()]

    def get_fields(self):
        fields = super().get_fields()
        for name, (make_field, _) in self.extensions.items():
            fields[name] = make_field()
        return fields

    def get_events_url(self, run) -> str:
        return f"/api/runs/{run.pk}/events/"


class RunFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(Run.Status.choices, required=False)
    thread = serializers.IntegerField(required=False)
    kind = serializers.CharField(max_length=20, required=False, help_text='"agent", "workflow"…')


class RaceSafeWrites:
    """Creates and updates that race a delete answer as if they came one after the other, never
    500. An update locks its row (a delete waits for it, or it finds the object gone: 404), and
    a write whose referenced object is deleted meanwhile (the foreign key fails at commit) or
    that loses a race for a unique name is a 409 the client can retry."""

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        updating = self.action in ("update", "partial_update")
        return queryset.select_for_update(of=("self",)) if updating else queryset

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


@extend_schema_view(list=extend_schema(parameters=[RunFilterSerializer]))
class RunViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Run.objects.none()
    serializer_class = RunSerializer

    def get_queryset(self):
        runs = self.request.user.runs.select_related(*RunSerializer.related())
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
