"""Webhook endpoints, the outbox of deliveries (one row per event per endpoint, written in the
transaction that ends or parks the run) and the record of each attempt."""

import base64
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from agents.secrets import sealed
from runs.models import Run

EVENTS = ["run.completed", "run.failed", "run.stopped", "run.waiting"]
EVENT_OF_STATUS = {
    Run.Status.COMPLETED: "run.completed",
    Run.Status.FAILED: "run.failed",
    Run.Status.STOPPED: "run.stopped",
    Run.Status.WAITING: "run.waiting",
}
ONE_OFF_EVENTS = ["run.completed", "run.failed", "run.stopped"]  # a run's `webhook`: its end


def new_secret():
    """A Standard Webhooks secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Signing(models.Model):
    """A signing secret, sealed at rest, and the one it replaced: that one signs too (a second
    signature, as Standard Webhooks allows) for WEBHOOKS_ROTATION_GRACE seconds after a
    rotation, so a receiver can switch to the new secret without refusing a delivery."""

    secret_sealed = models.TextField(editable=False)
    previous_secret_sealed = models.TextField(editable=False, blank=True)
    previous_expires = models.DateTimeField(null=True, blank=True, editable=False)

    secret = sealed("secret_sealed")
    previous_secret = sealed("previous_secret_sealed")

    class Meta:
        abstract = True

    def rotate(self):
        """A new secret (returned); the old one signs beside it for the grace period."""
        grace = settings.WEBHOOKS_ROTATION_GRACE
        self.previous_secret_sealed = self.secret_sealed if grace > 0 else ""
        self.previous_expires = timezone.now() + timedelta(seconds=grace) if grace > 0 else None
        secret = new_secret()
        self.secret = secret
        self.save(update_fields=["secret_sealed", "previous_secret_sealed", "previous_expires",
                                 "updated"])  # fmt: skip
        return secret

    def signing_secrets(self, now):
        """The secrets that sign an attempt made at `now`."""
        secrets = [self.secret]
        if self.previous_secret_sealed and self.previous_expires and now < self.previous_expires:
            secrets.append(self.previous_secret)
        return secrets


class Endpoint(Signing):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.url


class SigningSecret(Signing):
    """The secret that signs a user's one-off deliveries (a run started with a `webhook`)."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="webhook_signing_secret"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"signing secret of {self.owner}"


class RunWebhook(models.Model):
    """The one-off `webhook` URL a run was started with: its end is delivered there."""

    run = models.OneToOneField(Run, models.CASCADE, related_name="webhook")
    url = models.URLField(max_length=500)

    def __str__(self):
        return f"{self.run_id} -> {self.url}"


class DeliveryQuerySet(models.QuerySet):
    def due(self, now):
        """Pending, due, and held by no attempt (or by one whose lease lapsed: a lost worker)."""
        unclaimed = models.Q(claimed_until=None) | models.Q(claimed_until__lt=now)
        return self.filter(unclaimed, status=Delivery.Status.PENDING, next_attempt__lte=now)


class Delivery(models.Model):
    """One event for one endpoint (or a run's one-off URL): pending until an attempt is
    answered with a 2xx, or failed once the retry schedule is spent. Its id is the
    `webhook-id`, the same on every attempt, so receivers can deduplicate."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # for good: every attempt of the schedule failed

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(
        Endpoint, models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    url = models.URLField(max_length=500, help_text="a one-off delivery's URL (a run's webhook)")
    run = models.ForeignKey(Run, models.SET_NULL, null=True, blank=True, related_name="+")
    event = models.CharField(max_length=40)
    body = models.TextField(help_text="the JSON sent, the same bytes on every attempt")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # the attempts made before the last "send again": its retries follow the schedule afresh
    resent_after = models.PositiveIntegerField(default=0)
    next_attempt = models.DateTimeField(null=True, blank=True)
    # the lease of the attempt in progress: no other attempt starts before it lapses
    claimed_until = models.DateTimeField(null=True, blank=True)
    # when its task was last sent; null when the broker refused it (the sweep sends it then)
    enqueued = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    ended = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True, help_text="why it ended unattempted")

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "deliveries"
        indexes = [
            # the sweep's question: which pending deliveries are due
            models.Index(
                fields=["next_attempt"],
                name="webhooks_delivery_due",
                condition=models.Q(status="pending"),
            ),
            models.Index(fields=["endpoint", "-created"], name="webhooks_delivery_endpoint"),
        ]

    def __str__(self):
        return f"{self.event} {self.webhook_id}"

    @property
    def webhook_id(self):
        return f"msg_{self.id.hex}"

    @property
    def target(self):
        return self.endpoint.url if self.endpoint_id else self.url


class Attempt(models.Model):
    class Outcome(models.TextChoices):
        DELIVERED = "delivered"  # a 2xx
        HTTP_ERROR = "http_error"  # any other status, a redirect too (never followed)
        TIMEOUT = "timeout"  # no whole answer within WEBHOOKS_TIMEOUT
        CONNECTION_ERROR = "connection_error"  # no connection, or it broke
        REFUSED = "refused"  # not a public address, or not sent at all (endpoint disabled)

    delivery = models.ForeignKey(Delivery, models.CASCADE, related_name="attempt_set")
    number = models.PositiveIntegerField()
    started = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    error = models.CharField(max_length=500, blank=True)
    response = models.TextField(blank=True, help_text="the start of the response's body")

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhooks_attempt_once")
        ]

    def __str__(self):
        return f"attempt {self.number}: {self.outcome}"
