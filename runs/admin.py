"""Threads, their messages and runs in the admin. A run's lifecycle belongs to the workers and the
stop service, so its columns are read-only here. The apps that keep rows beside runs and threads
add their inlines to these admins (ThreadAdmin.inlines, RunAdmin.inlines) from their own admin
modules."""

from django.contrib import admin, messages

from .bulk import runs_stop
from .models import FollowUp, InputRequest, Message, Run, Thread


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


class InputRequestInline(ReadOnlyInline):
    """What the run asked a person, and the answers: people answer on the chat page or with
    the API (an answer enqueues the run; the admin only shows them)."""

    model = InputRequest
    fields = ["kind", "name", "arguments", "question", "status", "approved_arguments", "reason",
              "answer", "created", "resolved"]  # fmt: skip


class FollowUpInline(ReadOnlyInline):
    """Messages queued behind the thread's runs (`if_busy: "enqueue"`), and what became of them."""

    model = FollowUp
    fields = ["message", "status", "run", "error", "created"]


class RunInline(ReadOnlyInline):
    model = Run
    fields = ["id", "kind", "status", "trigger", "error", "created", "finished"]
    show_change_link = True


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "updated"]
    search_fields = ["title", "owner__username"]
    inlines = [RunInline, MessageInline, FollowUpInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["__str__", "thread", "role", "run", "created"]
    list_filter = ["role"]
    raw_id_fields = ["thread", "run"]


@admin.action(description="Stop selected runs")
def stop_runs(modeladmin, request, queryset):
    """Through the lifecycle, as the API's stop: a queued or waiting run ends at once, a running
    one within a second."""
    stopped, more = runs_stop(runs=queryset)
    note = f"Asked {len(stopped)} active run(s) to stop."
    if more:
        note += f" Only the oldest {len(stopped)} (RUN_BULK_MAX): run the action again for more."
    modeladmin.message_user(request, note, messages.SUCCESS)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "thread", "kind", "status", "trigger", "created", "finished"]
    list_filter = ["kind", "status", "trigger"]
    search_fields = ["id", "owner__username", "error"]
    raw_id_fields = ["thread", "owner", "retry_of"]
    readonly_fields = [
        "kind", "status", "error", "attempt", "lease_owner", "lease_expires", "stop_requested",
        "requeued", "input_tokens", "output_tokens", "created", "started", "finished",
    ]  # fmt: skip
    inlines = [InputRequestInline, MessageInline]
    actions = [stop_runs]  # the apps of kinds add theirs (workflows: retry)
