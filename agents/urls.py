"""The agents app's pages (chats) and API (agents, threads and their agent runs, API keys).
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
]

api_urlpatterns = [
    *router.urls,
]
