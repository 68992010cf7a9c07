"""The runs app's API: runs (list, get, stop, retry), their event streams, and the threads'
streams of the runs that start on them. It has no pages of its own: each kind's app shows its
runs. config/urls.py mounts `api_urlpatterns` under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, events

router = SimpleRouter()
router.register("runs", api.RunViewSet, basename="run")

urlpatterns = []

api_urlpatterns = [
    path("runs/<uuid:run_id>/events/", events.run_events, name="run-events"),
    # beside agents' /api/threads/ router, which config/urls.py includes after this
    path("threads/<int:thread_id>/events/", events.thread_events, name="thread-events"),
    *router.urls,
]
