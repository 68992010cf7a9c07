"""The API of a user's own keys, /api/keys/: list them (never their secret), make one (its
secret is in that answer only), revoke one (DELETE)."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from runs import openapi
from runs.errors import ServiceError

from .models import ApiKey


class TooManyKeys(ServiceError):
    status = 429
    code = "too_many_keys"


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created", "last_used"]
        read_only_fields = ["prefix", "created", "last_used"]


class NewApiKeySerializer(ApiKeySerializer):
    """For the schema: a new key's answer, with its secret."""

    key = serializers.CharField(help_text="The key itself: in this answer only.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = ApiKey.objects.none()  # the model, for the schema; get_queryset() has the user's
    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return self.request.user.api_keys.all()

    @extend_schema(
        responses={
            201: NewApiKeySerializer,
            429: openapi.error("`too_many_keys`: you have as many keys as allowed."),
        }
    )
    def create(self, request):
        data = self.get_serializer(data=request.data)
        data.is_valid(raise_exception=True)
        if request.user.api_keys.count() >= settings.API_KEYS_MAX_PER_USER:
            raise TooManyKeys(
                f"You have {settings.API_KEYS_MAX_PER_USER} API keys, the most allowed;"
                " revoke one first."
            )
        key, secret = ApiKey.issue(owner=request.user, **data.validated_data)
        return Response(
            {**self.get_serializer(key).data, "key": secret}, status=status.HTTP_201_CREATED
        )
