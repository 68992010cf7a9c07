"""The API of what agents connect to: providers of models and MCP servers. Secrets (API keys,
headers) are written here and never read back: answers show only whether they are set."""

import re
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import ProtectedError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from runs import openapi
from runs.api import OwnedViewSet
from runs.errors import ServiceConflict, ServiceError

from . import toolbox
from .models import McpServer, Provider
from .tools.addresses import first_private

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")  # an HTTP token
# set by the client itself: a user's value would break the exchange or smuggle a second one
RESERVED_HEADERS = {
    "host", "content-length", "content-type", "transfer-encoding", "connection", "accept",
    "accept-encoding", "te", "upgrade", "keep-alive", "mcp-session-id", "mcp-protocol-version",
}  # fmt: skip
MAX_HEADERS = 20
SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class TooMany(ServiceError):
    status = 429
    code = "too_many"


class Unreachable(ServiceError):
    """The user's server could not be listed: their configuration or their server is at fault,
    not this service, so a 4xx (Failed Dependency), with the reason."""

    status = 424
    code = "mcp_unreachable"


def parse_headers(text):
    """`Name: value` lines as a dict (blank lines skipped); ValueError for a line that is not."""
    headers = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"Line {number} is not “Name: value”.")
        headers[name.strip()] = value.strip()
    return headers


class HeadersField(serializers.DictField):
    """Extra HTTP headers, write-only: values may be secrets (a proxy's key, a bearer token)."""

    def __init__(self, **kwargs):
        child = serializers.CharField(max_length=4000, allow_blank=True, trim_whitespace=False)
        super().__init__(child=child, write_only=True, required=False, **kwargs)

    def to_internal_value(self, data):
        headers = super().to_internal_value(data)
        if len(headers) > MAX_HEADERS:
            raise serializers.ValidationError(f"At most {MAX_HEADERS} headers.")
        for name, value in headers.items():
            if not HEADER_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a header name.")
            if name.lower() in RESERVED_HEADERS:
                raise serializers.ValidationError(f"{name} is set by Relay itself.")
            if any(c in value for c in "\r\n\0"):
                raise serializers.ValidationError(f"The value of {name} has a line break.")
        return headers


class SecretsSerializer(serializers.ModelSerializer):
    """Shows `header_names` for the write-only `headers`."""

    headers = HeadersField()
    header_names = serializers.SerializerMethodField()

    def get_header_names(self, instance) -> list[str]:
        return sorted(instance.headers)

    def validate_name(self, value):
        owner = self.context["request"].user
        taken = self.Meta.model.objects.filter(owner=owner, name=value)
        if taken.exclude(pk=getattr(self.instance, "pk", None)).exists():
            raise serializers.ValidationError(
                f"You already have a {self.Meta.model._meta.verbose_name} with this name."
            )
        return value


def refusal(url, *, allow_private):
    """Why the worker may not call `url`, or None: only http(s), and only public addresses
    unless `allow_private`. The connection checks again (the name may resolve anew)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Enter an http:// or https:// URL."
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None  # not now, maybe later: the connection looks again
    refused = first_private([info[4][0] for info in infos])
    if refused is not None:
        return f"{parts.hostname} resolves to {refused}, which is not a public address."
    return None


def check_url(url, *, allow_private, setting):
    """Refuse a URL whose host is not public, unless `allow_private` (named by `setting`)."""
    reason = refusal(url, allow_private=allow_private)
    if reason:
        if "public" in reason:
            reason += f" (an administrator can allow private addresses: {setting}=1)"
        raise serializers.ValidationError(reason)
    return url


class ProviderSerializer(SecretsSerializer):
    api_key = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=4000, trim_whitespace=True
    )
    has_api_key = serializers.SerializerMethodField()

    class Meta:
        model = Provider
        fields = [
            "id", "name", "kind", "base_url", "api_key", "has_api_key", "default_model",
            "headers", "header_names", "created", "updated",
        ]  # fmt: skip

    def get_has_api_key(self, provider) -> bool:
        return bool(provider.api_key_sealed)

    def validate_base_url(self, value):
        return check_url(
            value,
            allow_private=settings.PROVIDERS_ALLOW_PRIVATE,
            setting="PROVIDERS_ALLOW_PRIVATE",
        )


class McpToolSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="the name the model sees: <server>__<tool>")
    tool = serializers.CharField(help_text="the server's own name for it")
    description = serializers.CharField()
    parameters = serializers.DictField(help_text="its JSON Schema")


class McpServerSerializer(SecretsSerializer):
    transport = serializers.ChoiceField(
        [McpServer.Transport.STREAMABLE_HTTP], default=McpServer.Transport.STREAMABLE_HTTP,
        help_text="stdio servers start a command on the workers: only an administrator adds"
        " them, in the admin",
    )  # fmt: skip
    url = serializers.URLField(max_length=500)
    allowed_tools = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=200, required=False
    )
    tools = McpToolSerializer(many=True, read_only=True)

    class Meta:
        model = McpServer
        fields = [
            "id", "name", "url", "transport", "headers", "header_names", "enabled",
            "allowed_tools", "tools", "tools_refreshed", "tools_error", "created", "updated",
        ]  # fmt: skip

    def validate_name(self, value):
        if not SERVER_NAME.match(value):
            raise serializers.ValidationError(
                "Use letters, digits, _ and - (its tools are named <server>__<tool>)."
            )
        return super().validate_name(value)

    def validate_url(self, value):
        return check_url(
            value, allow_private=settings.MCP_ALLOW_PRIVATE, setting="MCP_ALLOW_PRIVATE"
        )

    def validate(self, data):
        if self.instance is not None and self.instance.transport == McpServer.Transport.STDIO:
            raise serializers.ValidationError(
                {"transport": "This stdio server is an administrator's: change it in the admin."}
            )
        return data

    def save(self, **kwargs):
        server = super().save(**kwargs)
        changed = {"url", "headers", "transport"} & set(self.validated_data)
        if changed and server.tools_refreshed is not None:
            toolbox.forget_tools(server)  # listed from another address: list again
        return server


LIMITS = {Provider: "PROVIDERS_MAX_PER_USER", McpServer: "MCP_SERVERS_MAX_PER_USER"}


def connection_create(*, serializer, owner):
    """Save the provider or MCP server `serializer` holds as `owner`'s, unless they have as
    many as their limit allows (TooMany). The API and the pages both create through it."""
    model = serializer.Meta.model
    limit = getattr(settings, LIMITS[model])
    if model.objects.filter(owner=owner).count() >= limit:
        noun = model._meta.verbose_name_plural
        raise TooMany(f"You have {limit} {noun}, the most allowed; delete one first.")
    return serializer.save(owner=owner)


def connection_delete(connection):
    """Delete a provider or MCP server, unless agents use it (ServiceConflict, naming them)."""
    try:
        connection.delete()
    except ProtectedError as exc:
        names = ", ".join(sorted(str(agent) for agent in exc.protected_objects)[:10])
        raise ServiceConflict(f"Agents use it: {names}. Change them first.") from None


class CappedViewSet(OwnedViewSet):
    """Owned objects, at most their limit (LIMITS) per user, and not deleted while agents use
    them."""

    def perform_create(self, serializer):
        connection_create(serializer=serializer, owner=self.request.user)

    def perform_destroy(self, instance):
        connection_delete(instance)


def capped_schema(serializer):
    return extend_schema_view(
        create=extend_schema(
            responses={201: serializer, 429: openapi.error("`too_many`: as many as allowed.")}
        ),
        destroy=extend_schema(
            responses={204: None, 409: openapi.error("`conflict`: agents use it.")}
        ),
    )


class McpToolsSerializer(serializers.Serializer):
    tools = McpToolSerializer(many=True)


@capped_schema(ProviderSerializer)
class ProviderViewSet(CappedViewSet):
    queryset = Provider.objects.none()
    serializer_class = ProviderSerializer
    related_name = "providers"


@capped_schema(McpServerSerializer)
class McpServerViewSet(CappedViewSet):
    queryset = McpServer.objects.none()
    serializer_class = McpServerSerializer
    related_name = "mcp_servers"

    @extend_schema(
        request=None,
        responses={
            200: McpToolsSerializer,
            424: openapi.error("`mcp_unreachable`: the server could not be listed; why."),
        },
    )
    @action(detail=True, methods=["post"])
    def refresh(self, request, pk=None):
        """List the server's tools again, now, and show them as the model will see them."""
        server = self.get_object()
        error = toolbox.refresh_tools(server)
        if error:
            raise Unreachable(error)
        return Response({"tools": McpToolSerializer(server.tools, many=True).data})
