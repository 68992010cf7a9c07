from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from scheduling.api import ScheduleViewSet
from workflows.api import WorkflowViewSet

from . import api, events, http, keys

router = SimpleRouter()
router.register("agents", api.AgentViewSet, basename="agent")
router.register("threads", api.ThreadViewSet, basename="thread")
router.register("runs", api.RunViewSet, basename="run")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("keys", keys.ApiKeyViewSet, basename="apikey")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("runs/<uuid:run_id>/events/", events.run_events, name="run-events"),
    *router.urls,
    re_path(r"^(?P<path>.*/)$", http.not_found),  # last; unslashed URLs still redirect first
]
