"""The webhooks app's API (no pages). config/urls.py mounts `api_urlpatterns` under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("webhooks", api.EndpointViewSet, basename="webhook")

urlpatterns = []

api_urlpatterns = [
    # before the router's webhooks/<pk>/
    path("webhooks/signing-secret/", api.signing_secret, name="webhook-signing-secret"),
    path(
        "webhooks/signing-secret/rotate/",
        api.signing_secret_rotate,
        name="webhook-signing-secret-rotate",
    ),
    *router.urls,
]
