"""The webhooks' metrics: attempts by outcome, counted as each is recorded (the webhooks app's
attempt_recorded; the delivery task's flush sends them), and the age of the oldest delivery
still pending, read at scrape time from the outbox."""

from django.db import connection
from django.db.models import Min
from django.utils import timezone

from runs import metrics
from webhooks.models import Attempt, Delivery
from webhooks.signals import attempt_recorded

DELIVERIES = metrics.counter(
    "relay_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: " + ", ".join(Attempt.Outcome.values),
    ("outcome",),
)


def oldest_pending():
    try:
        first = Delivery.objects.filter(status=Delivery.Status.PENDING).aggregate(m=Min("created"))
    finally:
        connection.close()
    first = first["m"]
    return 0 if first is None else max(0.0, (timezone.now() - first).total_seconds())


metrics.gauge(
    "relay_webhook_oldest_pending_seconds",
    "How long the oldest webhook delivery still pending has waited since its event (0: none)",
    read=oldest_pending,
    source="database",
)


def count_attempt(sender, attempt, **kwargs):
    DELIVERIES.inc(outcome=attempt.outcome)


def connect():
    attempt_recorded.connect(count_attempt, dispatch_uid="ops-webhooks")
