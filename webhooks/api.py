"""The webhooks API: endpoints (the signing secret shown once, at creation and on rotation),
their deliveries with each attempt, and the secret of a user's one-off deliveries."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action, api_view
from rest_framework.response import Response

from runs import openapi
from runs.api import OwnedViewSet

from . import services
from .models import EVENTS, Attempt, Delivery, Endpoint


class EndpointSerializer(serializers.ModelSerializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(
        child=serializers.ChoiceField(EVENTS), min_length=1, max_length=20,
        help_text="the events to deliver: " + ", ".join(EVENTS),
    )  # fmt: skip

    class Meta:
        model = Endpoint
        fields = ["id", "url", "events", "description", "enabled", "created", "updated"]

    def validate_url(self, value):
        reason = services.url_refusal(value)
        if reason:
            raise serializers.ValidationError(reason)
        return value

    def validate_events(self, value):
        return sorted(set(value), key=EVENTS.index)


class SecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_…: verify the signatures with it")


class EndpointCreatedSerializer(EndpointSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="whsec_…, shown this once: verify the signatures with it"
    )

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["number", "started", "duration_ms", "status_code", "outcome", "error",
                  "response"]  # fmt: skip


class DeliverySerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(read_only=True, help_text="the webhook-id header")
    attempts = AttemptSerializer(many=True, read_only=True, source="attempt_set")

    class Meta:
        model = Delivery
        fields = ["webhook_id", "event", "run", "status", "next_attempt", "created", "ended",
                  "error", "attempts"]  # fmt: skip


@extend_schema_view(
    create=extend_schema(
        responses={
            201: EndpointCreatedSerializer,
            429: openapi.error("`too_many_webhooks`: as many as WEBHOOKS_MAX_PER_USER allows."),
        }
    )
)
class EndpointViewSet(OwnedViewSet):
    queryset = Endpoint.objects.none()  # the model, for the schema
    serializer_class = EndpointSerializer
    related_name = "webhook_endpoints"

    def create(self, request, *args, **kwargs):
        data = EndpointSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(owner=request.user, **data.validated_data)
        endpoint_data = EndpointSerializer(endpoint).data
        return Response(
            {**endpoint_data, "secret": endpoint.secret}, status=status.HTTP_201_CREATED
        )

    @extend_schema(request=None, responses={200: SecretSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        """A new signing secret, shown this once; the old one no longer signs."""
        secret = services.endpoint_rotate(endpoint=self.get_object())
        return Response({"secret": secret})

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The endpoint's deliveries, newest first, each with its attempts."""
        endpoint = self.get_object()
        deliveries = endpoint.deliveries.prefetch_related("attempt_set").order_by("-created")
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)


@extend_schema(
    methods=["GET"], request=None, responses={200: SecretSerializer},
    description="The secret that signs the deliveries to a run's one-off `webhook` URL.",
)  # fmt: skip
@api_view(["GET"])
def signing_secret(request):
    return Response({"secret": services.signing_secret_get(owner=request.user).secret})


@extend_schema(methods=["POST"], request=None, responses={200: SecretSerializer})
@api_view(["POST"])
def signing_secret_rotate(request):
    """A new secret for one-off deliveries; the old one no longer signs."""
    return Response({"secret": services.signing_secret_rotate(owner=request.user).secret})
