"""The workflows app's pages and API. config/urls.py mounts `urlpatterns` at the root and `api`
under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views
from .api import RunStepsView, WorkflowViewSet

router = SimpleRouter()
router.register("workflows", WorkflowViewSet, basename="workflow")

urlpatterns = [
    path("workflows/", views.workflow_list, name="workflows"),
    path("workflows/<int:pk>/", views.workflow_detail, name="workflow"),
    path("workflows/runs/<uuid:run_id>/", views.workflow_run, name="workflow-run"),
]

api_urlpatterns = [
    path("runs/<uuid:pk>/steps/", RunStepsView.as_view(), name="run-steps"),
    *router.urls,
]
