"""The runs API (list, get, stop, retry; the event stream is runs/events.py), and what every app's
API shares: the owner-only view set, references to the user's own objects, race-safe writes."""

from django.conf import settings
from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import openapi
from .bulk import runs_retry, runs_stop
from .errors import ServiceConflict
from .lifecycle import run_respond, run_retry, run_stop
from .models import FollowUp, InputRequest, Message, Run
from .parsers import MAX_ID, integer, object_id


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
            "interrupted", "position", "created",
        ]  # fmt: skip


class PendingSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(InputRequest.Kind.choices)
    call = serializers.CharField(help_text="the tool call's id")
    name = serializers.CharField(help_text="the tool, as the model named it")
    arguments = serializers.CharField(help_text="JSON text, as the model wrote them")
    question = serializers.CharField(help_text="a question's text; empty for an approval")


class RespondSerializer(serializers.Serializer):
    request = serializers.IntegerField(help_text="the id of one of the run's pending requests")
    approve = serializers.BooleanField(
        required=False, allow_null=True, default=None,
        help_text="an approval: true approves, false denies",
    )  # fmt: skip
    arguments = serializers.CharField(
        required=False, allow_null=True, default=None, trim_whitespace=False,
        help_text="approving: the arguments to call the tool with instead (a JSON object)",
    )  # fmt: skip
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000,
                                   help_text="denying: why, for the model")  # fmt: skip
    answer = serializers.CharField(required=False, allow_blank=True, default="",
                                   help_text="a question: the answer")  # fmt: skip

    def validate_arguments(self, value):
        return within_message_limit(value)

    def validate_answer(self, value):
        return within_message_limit(value)


def within_message_limit(value):
    """`value`, unless it holds more bytes than a message may (RUN_MESSAGE_MAX_BYTES)."""
    size = len(value.encode()) if value else 0
    if size > settings.RUN_MESSAGE_MAX_BYTES:
        raise serializers.ValidationError(
            f"Ensure this field has no more than {settings.RUN_MESSAGE_MAX_BYTES} bytes"
            f" (it has {size})."
        )
    return value


class RunSerializer(serializers.ModelSerializer):
    """A run as the API shows it. The apps that keep rows beside runs add their fields (a run's
    agent, its workflow) with `extend()` from their ready(): every run shows them all."""

    events_url = serializers.SerializerMethodField()
    pending = serializers.SerializerMethodField()
    extensions = {}  # field name -> (a function making the field, the relation it reads)

    class Meta:
        model = Run
        fields = [
            "id", "kind", "thread", "retry_of", "status", "trigger", "error", "attempt",
            "stop_requested", "input_tokens", "output_tokens", "created", "started", "finished",
            "events_url", "pending",
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

    @extend_schema_field(PendingSerializer(many=True))
    def get_pending(self, run):
        """What a waiting run asks (only a waiting run has a request pending: no query else)."""
        if run.status != Run.Status.WAITING:
            return []
        pending = run.requests.filter(status=InputRequest.Status.PENDING)
        return [request.as_event() for request in pending]


class FollowUpSerializer(serializers.ModelSerializer):
    """A message queued on a busy thread (`if_busy: "enqueue"`): `pending` until its run starts
    (then `run` is its id), `failed` with the `error` if its start was refused for good,
    `cancelled` if an interrupting message took the thread."""

    follow_up = serializers.IntegerField(source="pk", read_only=True)
    position = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="1 for the next to start; null once started"
    )

    class Meta:
        model = FollowUp
        fields = ["follow_up", "thread", "status", "position", "message", "run", "error", "created"]


class RunFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(Run.Status.choices, required=False)
    thread = serializers.IntegerField(required=False)
    kind = serializers.CharField(max_length=20, required=False, help_text='"agent", "workflow"…')


def id_filter(**kwargs):
    """A filter on an object's id: one that can exist (a bigger one would overflow the query)."""
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, **kwargs)


class RunSelectionSerializer(serializers.Serializer):
    """Which of the caller's runs a bulk action acts on: those that match every filter given (at
    least one). The apps that keep rows beside runs add their filters (a run's agent, its
    workflow) with `extend()` from their ready()."""

    status = serializers.ChoiceField(Run.Status.choices, required=False)
    thread = id_filter(help_text="a thread's id")
    created_before = serializers.DateTimeField(required=False, help_text="runs created before")
    ids = serializers.ListField(
        child=serializers.UUIDField(), required=False, allow_empty=False,
        help_text="runs' ids (RUN_BULK_MAX at most)",
    )  # fmt: skip
    lookups = {"status": "status", "thread": "thread", "created_before": "created__lt",
               "ids": "pk__in"}  # fmt: skip
    extensions = {}  # filter name -> (a function making the field, the lookup it filters on)

    @classmethod
    def extend(cls, name, make_field, *, lookup):
        """Accept the filter `make_field()` makes as `name`, selecting runs by `lookup`."""
        cls.extensions[name] = (make_field, lookup)

    def get_fields(self):
        fields = super().get_fields()
        for name, (make_field, _) in self.extensions.items():
            fields[name] = make_field()
        return fields

    def validate_ids(self, value):
        if len(value) > settings.RUN_BULK_MAX:
            raise serializers.ValidationError(
                f"Ensure this field has no more than {settings.RUN_BULK_MAX} elements."
            )
        return list(dict.fromkeys(value))

    def validate(self, data):
        if not data:
            names = ", ".join([*self.lookups, *self.extensions])
            raise serializers.ValidationError(f"Give at least one filter: {names}.")
        return data

    def select(self, runs):
        """The runs among `runs` that match."""
        lookups = {**self.lookups, **{n: lookup for n, (_, lookup) in self.extensions.items()}}
        return runs.filter(**{lookups[name]: value for name, value in self.validated_data.items()})


class BulkStopSerializer(serializers.Serializer):
    stopped = serializers.IntegerField(help_text="how many runs were asked to stop")
    runs = serializers.ListField(child=serializers.UUIDField(), help_text="their ids")
    more = serializers.BooleanField(help_text="more matched than RUN_BULK_MAX: call again")


class RefusedSerializer(serializers.Serializer):
    run = serializers.UUIDField(help_text="the failed run")
    error = serializers.CharField(help_text="why its retry was refused: `thread_busy`, ...")
    detail = serializers.CharField()


class BulkRetrySerializer(serializers.Serializer):
    retried = serializers.IntegerField(help_text="how many runs were retried")
    runs = serializers.ListField(child=RunSerializer(), help_text="the new runs")
    refused = RefusedSerializer(many=True)
    more = serializers.BooleanField(help_text="more matched than RUN_BULK_MAX: call again")


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
        request=RespondSerializer,
        responses={
            202: RunSerializer,
            409: openapi.error("`conflict`: the request is not pending, or the run not waiting."),
        },
    )
    @action(detail=True, methods=["post"])
    def respond(self, request, pk=None):
        """Answer what a waiting run asks: approve or deny a tool call, or answer a question.
        Once nothing is pending the run is enqueued again and goes on on the same stream."""
        data = RespondSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = run_respond(run=self.get_object(), **data.validated_data)
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

    def _selected(self, request):
        selection = RunSelectionSerializer(data=request.data)
        selection.is_valid(raise_exception=True)
        return selection.select(request.user.runs.all())

    @extend_schema(
        operation_id="runs_stop_many",
        request=RunSelectionSerializer,
        responses={202: BulkStopSerializer},
        description="Stop your active runs (queued, running, waiting) that match every filter"
        " given, at most RUN_BULK_MAX (the oldest first; `more` says whether there are others).",
    )
    @action(detail=False, methods=["post"], url_path="stop", url_name="stop-many")
    def stop_many(self, request):
        stopped, more = runs_stop(runs=self._selected(request))
        body = {"stopped": len(stopped), "runs": [str(pk) for pk in stopped], "more": more}
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="runs_retry_many",
        request=RunSelectionSerializer,
        responses={202: BulkRetrySerializer},
        description="Retry your failed workflow runs that match every filter given and that"
        " were not retried yet (a run a later run's `retry_of` names is left: its last retry is"
        " the one to retry), at most RUN_BULK_MAX, the oldest first. A retry that is refused"
        " (its thread busy, your cap on active runs, the queue down) is in `refused`.",
    )
    @action(detail=False, methods=["post"], url_path="retry", url_name="retry-many")
    def retry_many(self, request):
        started, refused, more = runs_retry(runs=self._selected(request))
        body = {
            "retried": len(started),
            "runs": RunSerializer(started, many=True).data,
            "refused": [
                {"run": str(run.pk), "error": exc.code, "detail": exc.message}
                for run, exc in refused
            ],
            "more": more,
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)
