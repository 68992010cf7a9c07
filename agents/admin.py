from django.contrib import admin
from django.db import models

from runs.admin import ReadOnlyInline, RunAdmin, ThreadAdmin
from runs.forms import OVERRIDES

from .auth import AdminLoginForm
from .models import Agent, ApiKey, RunAgent, ThreadAgent

admin.site.login_form = AdminLoginForm  # throttled as the page login is


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    formfield_overrides = {models.JSONField: OVERRIDES}
    list_display = ["name", "owner", "model", "updated"]
    list_filter = ["model"]
    search_fields = ["name", "owner__username"]


class ThreadAgentInline(admin.StackedInline):
    """The agent a thread talks to, on the thread's admin page."""

    model = ThreadAgent
    can_delete = False
    raw_id_fields = ["agent"]


class RunAgentInline(ReadOnlyInline):
    """The agent a run used, on the run's admin page."""

    model = RunAgent
    fields = ["agent"]


ThreadAdmin.inlines = [ThreadAgentInline, *ThreadAdmin.inlines]
RunAdmin.inlines = [RunAgentInline, *RunAdmin.inlines]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are listed and revoked here, never shown: only their digest is kept, and it stays
    off these pages too. They are made with the API or `manage.py create_api_key`."""

    list_display = ["__str__", "owner", "prefix", "created", "last_used"]
    search_fields = ["name", "prefix", "owner__username"]
    fields = ["owner", "name", "prefix", "created", "last_used"]
    readonly_fields = ["owner", "prefix", "created", "last_used"]

    def has_add_permission(self, request):
        return False
