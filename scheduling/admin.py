"""Schedules in the admin, the main place to manage them. django-celery-beat's own pages stay
as they are; each schedule's PeriodicTask shows there under the name relay-schedule-<id>."""

from django.contrib import admin, messages
from django.db import models

from runs.admin import ReadOnlyInline
from runs.forms import OVERRIDES

from . import cron, services
from .models import Fire, Schedule


class FireInline(ReadOnlyInline):
    model = Fire
    fields = ["slot", "manual", "outcome", "reason", "run", "created"]
    ordering = ["-slot"]


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    formfield_overrides = {models.JSONField: OVERRIDES}
    list_display = [
        "name", "owner", "target_name", "cron", "description", "timezone", "enabled",
        "next_fire", "last_outcome",
    ]  # fmt: skip
    list_filter = ["enabled", "target", "overlap"]
    search_fields = ["name", "owner__username", "cron"]
    raw_id_fields = ["owner", "workflow", "agent", "thread"]
    readonly_fields = ["description", "next_fires", "disabled_reason", "created", "updated"]
    inlines = [FireInline]
    actions = ["pause", "resume", "run_now"]

    @admin.display(description="target")
    def target_name(self, schedule):
        if schedule.target_missing:
            return f"{schedule.target} (deleted)"
        return f"{schedule.target}: {schedule.workflow or schedule.agent}"

    @admin.display(description="runs")
    def description(self, schedule):
        return cron.describe(schedule.cron) if schedule.cron else ""

    @admin.display(description="next fire")
    def next_fire(self, schedule):
        if not schedule.enabled:
            return "paused"
        fires = cron.next_fires(schedule.cron, schedule.timezone, count=1)
        return f"{fires[0]:%Y-%m-%d %H:%M %Z}" if fires else "—"

    @admin.display(description="next fires")
    def next_fires(self, schedule):
        if not schedule.pk:
            return ""
        return ", ".join(
            f"{t:%a %Y-%m-%d %H:%M %Z}" for t in cron.next_fires(schedule.cron, schedule.timezone)
        )

    @admin.display(description="last outcome")
    def last_outcome(self, schedule):
        fire = schedule.fires.first()
        return f"{fire.outcome} ({fire.slot:%Y-%m-%d %H:%M})" if fire else "never fired"

    @admin.action(description="Pause the selected schedules")
    def pause(self, request, queryset):
        for schedule in queryset:
            services.schedule_pause(schedule=schedule)
        messages.success(request, f"Paused {queryset.count()} schedules.")

    @admin.action(description="Resume the selected schedules")
    def resume(self, request, queryset):
        for schedule in queryset:
            services.schedule_resume(schedule=schedule)
        messages.success(request, f"Resumed {queryset.count()} schedules.")

    @admin.action(description="Run the selected schedules now")
    def run_now(self, request, queryset):
        for schedule in queryset:
            fire = services.schedule_fire(schedule_id=schedule.pk, manual=True)
            level = messages.SUCCESS if fire.outcome == Fire.Outcome.STARTED else messages.WARNING
            messages.add_message(request, level, f"{schedule}: {fire.outcome} {fire.reason}")
