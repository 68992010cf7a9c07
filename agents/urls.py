from django.urls import path
from rest_framework.routers import SimpleRouter

from scheduling.api import ScheduleViewSet
from workflows.api import WorkflowViewSet

from . import api, events, keys

router = SimpleRouter()
router.register("agents", api.AgentViewSet, basename="agent")
router.register("threads", api.ThreadViewSet, basename="thread")
router.register("runs", api.RunViewSet, basename="run")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("keys", keys.ApiKeyViewSet, basename="apikey")

urlpatterns = [
    path("runs/<uuid:run_id>/events/", events.run_events, name="run-events"),
    *router.urls,
]
