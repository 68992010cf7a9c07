"""The agents app's pages (chats, agents, their connections) and API (agents, threads and
their agent runs, API keys, providers, MCP servers).
config/urls.py mounts `urlpatterns` at the root and `api_urlpatterns` under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, connections, keys, views

router = SimpleRouter()
router.register("agents", api.AgentViewSet, basename="agent")
router.register("threads", api.ThreadViewSet, basename="thread")
router.register("keys", keys.ApiKeyViewSet, basename="apikey")
router.register("providers", connections.ProviderViewSet, basename="provider")
router.register("mcp-servers", connections.McpServerViewSet, basename="mcpserver")

urlpatterns = [
    path("chats/", views.chat_list, name="chats"),
    path("chats/new/", views.chat_create, name="chat-create"),
    path("chats/<int:pk>/", views.chat_detail, name="chat"),
    path("chats/<int:pk>/messages/", views.chat_messages, name="chat-messages"),
    path("chats/<int:pk>/rename/", views.chat_rename, name="chat-rename"),
    path("chats/<int:pk>/delete/", views.chat_delete, name="chat-delete"),
    path("agents/", views.agent_list, name="agents"),
    path("agents/<int:pk>/", views.agent_edit, name="agent"),
    path("agents/<int:pk>/delete/", views.agent_delete, name="agent-delete"),
    path("connections/", views.connections, name="connections"),
    path("connections/providers/", views.provider_create, name="provider-create"),
    path("connections/providers/<int:pk>/delete/", views.provider_delete, name="provider-delete"),
    path("connections/mcp-servers/", views.mcp_server_create, name="mcp-server-create"),
    path(
        "connections/mcp-servers/<int:pk>/refresh/",
        views.mcp_server_refresh,
        name="mcp-server-refresh",
    ),
    path(
        "connections/mcp-servers/<int:pk>/enable/",
        views.mcp_server_enable,
        name="mcp-server-enable",
    ),
    path(
        "connections/mcp-servers/<int:pk>/delete/",
        views.mcp_server_delete,
        name="mcp-server-delete",
    ),
]

api_urlpatterns = [
    *router.urls,
]
