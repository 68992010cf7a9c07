"""Endpoints and deliveries in the admin: each delivery with its attempts, and "send again"."""

from django.contrib import admin, messages

from runs.admin import ReadOnlyInline

from . import services
from .models import Attempt, Delivery, Endpoint, new_secret


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "owner", "events", "enabled", "created"]
    list_filter = ["enabled"]
    search_fields = ["url", "owner__username"]
    raw_id_fields = ["owner"]

    def save_model(self, request, obj, form, change):
        if not obj.secret_sealed:  # one added here: its owner rotates it to learn it
            obj.secret = new_secret()
        super().save_model(request, obj, form, change)


class AttemptInline(ReadOnlyInline):
    model = Attempt
    fields = ["number", "started", "duration_ms", "status_code", "outcome", "error", "response"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["webhook_id", "event", "owner", "target", "status", "attempts", "next_attempt",
                    "created"]  # fmt: skip
    list_filter = ["status", "event"]
    search_fields = ["owner__username", "url", "endpoint__url"]
    raw_id_fields = ["owner", "endpoint", "run"]
    readonly_fields = [
        "owner", "endpoint", "url", "run", "event", "body", "status", "attempts", "resent_after",
        "next_attempt", "claimed_until", "enqueued", "created", "ended", "error",
    ]  # fmt: skip
    inlines = [AttemptInline]
    actions = ["send_again"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Send again")
    def send_again(self, request, queryset):
        for delivery in queryset:
            services.delivery_resend(delivery=delivery)
        self.message_user(request, f"{queryset.count()} sent again.", messages.SUCCESS)
