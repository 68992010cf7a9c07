"""The usage app's API; it has no pages. config/urls.py mounts `api_urlpatterns` under /api/."""

from django.urls import path

from . import api

urlpatterns = []

api_urlpatterns = [
    path("usage/", api.usage, name="usage"),
]
