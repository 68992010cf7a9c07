"""The API of a user's own keys, /api/keys/: list them (never their secret), make one (its
secret is in that answer only), revoke one (DELETE)."""

from django.conf import settings
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from .models import ApiKey
from .services import ServiceError


class TooManyKeys(ServiceError):
    status = 429
    code = "too_many_keys"


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created", "last_used"]
        read_only_fields = ["prefix", "created", "last_used"]


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return self.request.user.api_keys.all()

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
