from django.contrib import admin
from django.db import models

from workflows.models import StepRun

from .auth import AdminLoginForm
from .forms import OVERRIDES
from .models import Agent, ApiKey, Message, Run, Thread

admin.site.login_form = AdminLoginForm  # throttled as the page login is


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    formfield_overrides = {models.JSONField: OVERRIDES}
    list_display = ["name", "owner", "model", "updated"]
    list_filter = ["model"]
    search_fields = ["name", "owner__username"]


class ReadOnlyInline(admin.TabularInline):
    """A record kept by the system: shown, never edited by hand."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ["position", "role", "content", "name", "tool_calls", "is_error", "created"]
    ordering = ["position"]


class RunInline(ReadOnlyInline):
    model = Run
    fields = ["id", "status", "trigger", "error", "created", "finished"]
    show_change_link = True


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "agent", "updated"]
    search_fields = ["title", "owner__username"]
    inlines = [RunInline, MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["__str__", "thread", "role", "run", "created"]
    list_filter = ["role"]
    raw_id_fields = ["thread", "run"]


class StepRunInline(ReadOnlyInline):
    model = StepRun
    fields = ["index", "step", "status", "output", "error", "reused", "finished"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "thread", "agent", "status", "trigger", "created", "finished"]
    list_filter = ["status", "trigger"]
    search_fields = ["id", "owner__username", "error"]
    raw_id_fields = ["thread", "agent", "owner", "workflow", "retry_of"]
    # The lifecycle belongs to the workers and the stop service, not to hand edits.
    readonly_fields = [
        "status", "error", "attempt", "lease_owner", "lease_expires", "stop_requested", "requeued",
        "input_tokens", "output_tokens", "created", "started", "finished",
    ]  # fmt: skip
    inlines = [StepRunInline, MessageInline]


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
