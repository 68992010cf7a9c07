"""The scheduling app's page and API. config/urls.py mounts `urlpatterns` at the root and `api`
under /api/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views
from .api import ScheduleViewSet

router = SimpleRouter()
router.register("schedules", ScheduleViewSet, basename="schedule")

urlpatterns = [
    path("schedules/", views.schedule_list, name="schedules"),
]

api_urlpatterns = router.urls
