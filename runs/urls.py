"""The runs app's API: runs (list, get, stop, retry) and their event streams. It has no pages of
its own: each kind's app shows its runs. config/urls.py mounts `api_urlpatterns` under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, events

router = SimpleRouter()
router.register("runs", api.RunViewSet, basename="run")

urlpatterns = []

api_urlpatterns = [
    path("runs/<uuid:run_id>/events/", events.run_events, name="run-events"),
    *router.urls,
]
