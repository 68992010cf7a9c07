"""Webhooks' services: endpoints and their secrets, the outbox the run signals fill, the
attempts (claimed with a conditional UPDATE, so two never run at once), the sweep that sends
the due ones again, and pruning.

At least once: a Delivery row commits with the run's terminal (or waiting) status; its task is
sent on commit, and the sweep sends it again when that failed (the broker away) or its retry is
due. Retries are due times in the database, not Celery countdowns: a Redis broker keeps a
delayed message in the worker's memory and redelivers it after the visibility timeout."""

import json
import logging
import time
from datetime import timedelta
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents.connections import refusal
from agents.secrets import SecretUnreadable
from runs.api import RunSerializer
from runs.errors import ServiceError
from runs.lifecycle import user_lock

from . import sender, signals
from .models import (
    EVENT_OF_STATUS,
    ONE_OFF_EVENTS,
    Attempt,
    Delivery,
    Endpoint,
    RunWebhook,
    SigningSecret,
    new_secret,
)

log = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.tasks.deliver_webhook_task"
QUEUE = "webhooks"  # CELERY_TASK_ROUTES sends the tasks there
SWEEP_BATCH = 500  # deliveries one sweep sends; the next sweep takes the rest


class TooManyWebhooks(ServiceError):
    status = 429
    code = "too_many_webhooks"


def url_refusal(url):
    """Why a webhook may not be sent to `url` (http(s), public addresses unless
    WEBHOOKS_ALLOW_PRIVATE), or None. Each attempt checks the addresses it dials again."""
    try:
        urlsplit(url).port  # noqa: B018  (raises for a port out of range)
    except ValueError as exc:
        return f"Enter a valid URL: {exc}."
    reason = refusal(url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE)
    if reason and "public" in reason:
        reason += " (an administrator can allow private addresses: WEBHOOKS_ALLOW_PRIVATE=1)"
    return reason


# Endpoints and secrets


def endpoint_create(*, owner, **fields):
    """A new endpoint of `owner`'s with a new secret, unless they have as many as allowed."""
    with transaction.atomic():
        # one create at a time per user, so two cannot both pass the cap
        user_lock(owner)
        if Endpoint.objects.filter(owner=owner).count() >= settings.WEBHOOKS_MAX_PER_USER:
            raise TooManyWebhooks(
                f"You have {settings.WEBHOOKS_MAX_PER_USER} webhooks, the most allowed"
                " (WEBHOOKS_MAX_PER_USER); delete one first."
            )
        endpoint = Endpoint(owner=owner, **fields)
        endpoint.secret = new_secret()
        endpoint.save()
    return endpoint


def endpoint_rotate(*, endpoint):
    """Give the endpoint a new secret: attempts from now on are signed with it, and with the
    old one too for WEBHOOKS_ROTATION_GRACE seconds."""
    return endpoint.rotate()


def signing_secret_get(*, owner):
    """The secret of `owner`'s one-off deliveries, made the first time it is asked for."""
    found = SigningSecret.objects.filter(owner=owner).first()
    if found is None:
        found = SigningSecret(owner=owner)
        found.secret = new_secret()
        try:
            with transaction.atomic():
                found.save()
        except IntegrityError:  # a concurrent first ask made it: that one is the secret
            found = SigningSecret.objects.get(owner=owner)
    return found


def signing_secret_rotate(*, owner):
    found = signing_secret_get(owner=owner)
    found.rotate()
    return found


# The outbox: the run signals' receivers (apps.py connects them), inside the run's transaction


def check_start(sender, *, options, **kwargs):
    """run_starting: refuse a start whose one-off `webhook` URL may not be called."""
    url = options.get("webhook")
    if url:
        reason = url_refusal(url)
        if reason:
            raise ServiceError(reason, field="webhook")


def remember_webhook(sender, *, run, options, **kwargs):
    """run_started: keep the run's one-off `webhook` URL for its end."""
    url = options.get("webhook")
    if url:
        RunWebhook.objects.create(run=run, url=url)


def on_run_changed(sender, *, run, taken_back=False, **kwargs):
    """run_ended and run_waiting: a Delivery for each endpoint of the owner's that wants the
    event (and the run's one-off URL, for an end), sent once the change commits. A start the
    queue refused is no run's end: it is taken back, and its client was told so."""
    event = EVENT_OF_STATUS.get(run.status)
    if event is None or taken_back:
        return
    # A fault here must not keep the run from ending (the exception would roll its end back):
    # in a savepoint of its own, logged, the run's change commits without its deliveries.
    try:
        with transaction.atomic():
            _write_deliveries(run, event)
    except Exception:
        log.exception("run %s: its %s webhooks could not be written", run.pk, event)


def _write_deliveries(run, event):
    endpoints = [
        endpoint
        for endpoint in Endpoint.objects.filter(owner_id=run.owner_id, enabled=True)
        if event in endpoint.events
    ]
    one_off = RunWebhook.objects.filter(run=run).first() if event in ONE_OFF_EVENTS else None
    if not endpoints and one_off is None:
        return
    body = payload(run, event)
    now = timezone.now()
    rows = [
        Delivery(owner_id=run.owner_id, endpoint=endpoint, url=endpoint.url)
        for endpoint in endpoints
    ]
    if one_off is not None:
        rows.append(Delivery(owner_id=run.owner_id, url=one_off.url))
    for row in rows:
        row.run, row.event, row.body, row.next_attempt, row.enqueued = run, event, body, now, now
    Delivery.objects.bulk_create(rows)
    ids = [str(row.pk) for row in rows]
    transaction.on_commit(lambda: send_tasks(ids))


def payload(run, event):
    """The body: Standard Webhooks' {type, timestamp, data}, data the run as the API shows it.
    Past WEBHOOKS_MAX_PAYLOAD_BYTES the run's pending requests are left out (`truncated`)."""
    data = dict(RunSerializer(run).data)
    body = {"type": event, "timestamp": timezone.now().isoformat(), "data": data}
    text = json.dumps(body, separators=(",", ":"), default=str)
    if len(text.encode()) > settings.WEBHOOKS_MAX_PAYLOAD_BYTES:
        data["pending"] = [{"id": p["id"], "kind": p["kind"]} for p in data.get("pending", [])]
        body["truncated"] = True
        text = json.dumps(body, separators=(",", ":"), default=str)
    return text


def send_tasks(ids):
    """Send the deliveries' tasks. A broker that refuses them is logged, and the sweep sends
    them once it is back (their `enqueued` is cleared)."""
    task = current_app.tasks[DELIVER_TASK]
    for delivery_id in ids:
        try:
            task.delay(delivery_id)
        except Exception as exc:
            log.warning("webhook delivery %s: not sent to the queue (the sweep will): %s",
                        delivery_id, exc)  # fmt: skip
            Delivery.objects.filter(pk=delivery_id).update(enqueued=None)


# Attempts


def retry_schedule():
    return settings.WEBHOOKS_RETRY_SCHEDULE


def delivery_attempt(*, delivery_id):
    """Make the delivery's next attempt if it is due and no other attempt holds it; record it,
    and set the next one's due time (or end the delivery). Returns the Attempt, or None."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.WEBHOOKS_TIMEOUT + 30)
    claimed = (
        Delivery.objects.due(now)
        .filter(pk=delivery_id)
        .update(claimed_until=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return None  # delivered, failed, not due yet, or another attempt holds it
    delivery = Delivery.objects.select_related("endpoint").get(pk=delivery_id)
    number = delivery.attempts
    started, clock = timezone.now(), time.monotonic()
    if delivery.endpoint_id and not delivery.endpoint.enabled:
        result = sender.Result(Attempt.Outcome.REFUSED, error="the endpoint is disabled")
    else:
        result = _send(delivery, started)
    duration = int((time.monotonic() - clock) * 1000)
    return _record(delivery, number, lease, started, duration, result)


def _send(delivery, started):
    signing = delivery.endpoint if delivery.endpoint_id else _one_off_signing(delivery)
    try:
        secrets = signing.signing_secrets(started)
    except SecretUnreadable as exc:  # the keys changed without a rotation
        return sender.Result(Attempt.Outcome.REFUSED, error=str(exc)[:500])
    try:
        signatures = [Webhook(s).sign(delivery.webhook_id, started, delivery.body) for s in secrets]
    except Exception as exc:  # an endpoint an administrator added without a secret
        return sender.Result(Attempt.Outcome.REFUSED, error=f"cannot sign: {exc}"[:500])
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Relay-Webhooks/1",
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(started.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
    # The POST may take WEBHOOKS_TIMEOUT: its thread gives its database connection back to the
    # pool meanwhile (the worker's threads would otherwise hold one each, doing nothing).
    if not connection.in_atomic_block:
        connection.close()
    return sender.post(
        delivery.target,
        delivery.body.encode(),
        headers,
        timeout=settings.WEBHOOKS_TIMEOUT,
        allow_private=settings.WEBHOOKS_ALLOW_PRIVATE,
        max_bytes=settings.WEBHOOKS_RESPONSE_MAX_BYTES,
    )


def _one_off_signing(delivery):
    return signing_secret_get(owner=delivery.owner)


def _record(delivery, number, lease, started, duration, result):
    now = timezone.now()
    schedule = retry_schedule()
    changes = {"claimed_until": None}
    if result.outcome == Attempt.Outcome.DELIVERED:
        changes.update(status=Delivery.Status.DELIVERED, next_attempt=None, ended=now)
    elif number - delivery.resent_after > len(schedule):
        changes.update(status=Delivery.Status.FAILED, next_attempt=None, ended=now)
    else:
        delay = schedule[number - delivery.resent_after - 1]
        changes["next_attempt"] = now + timedelta(seconds=delay)
        changes["enqueued"] = None  # the sweep sends it when it is due
    with transaction.atomic():
        attempt = Attempt.objects.create(
            delivery=delivery, number=number, started=started, duration_ms=duration,
            status_code=result.status_code, outcome=result.outcome, error=result.error[:500],
            response=result.response[:1000],
        )  # fmt: skip
        # this attempt's lease: one that lapsed and was claimed again is no longer ours
        ours = Delivery.objects.filter(pk=delivery.pk, claimed_until=lease).update(**changes)
    if ours and "ended" in changes:
        deliveries_prune(owner_id=delivery.owner_id, endpoint_id=delivery.endpoint_id)
    if ours:
        delivery.status = changes.get("status", delivery.status)
    signals.attempt_recorded.send(Attempt, attempt=attempt, delivery=delivery)
    log.info("webhook %s attempt %s: %s %s", delivery.webhook_id, number, result.outcome,
             result.status_code or result.error)  # fmt: skip
    return attempt


def delivery_resend(*, delivery):
    """Send a delivery again (the admin's "send again"): pending and due now, with the same
    `webhook-id` and body, and the retry schedule afresh after this attempt."""
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.PENDING, next_attempt=timezone.now(), ended=None,
        resent_after=F("attempts"), enqueued=timezone.now(),
    )  # fmt: skip
    transaction.on_commit(lambda: send_tasks([str(delivery.pk)]))


# The sweep (beat, every WEBHOOKS_SWEEP_SECONDS)


def deliveries_sweep():
    """Send the tasks of the due deliveries whose task was not sent (the broker was away, a
    retry came due) or was sent WEBHOOKS_REQUEUE_SECONDS ago and not attempted (a lost
    message), then prune. Each is marked sent first, with a compare-and-swap, so two sweeps
    never both send it. Returns how many were sent."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOKS_REQUEUE_SECONDS)
    unsent = Q(enqueued=None)
    # A task sent long ago may be lost, or only waiting: with no worker on the queue, sending
    # it again each minute would grow the queue without bound. So only while the queue is
    # short: its messages are then being taken, and a stale one was lost.
    due = Delivery.objects.due(now).filter(
        unsent | Q(enqueued__lt=stale) if queue_length() < SWEEP_BATCH else unsent
    )
    sent = []
    for delivery_id, enqueued in due.values_list("pk", "enqueued")[:SWEEP_BATCH]:
        if Delivery.objects.filter(pk=delivery_id, enqueued=enqueued).update(enqueued=now):
            sent.append(str(delivery_id))
    send_tasks(sent)
    deliveries_cap_pending()
    return len(sent)


def queue_length():
    """The messages waiting on the webhooks queue (a Redis list, on the Redis broker); 0 when
    it cannot be read."""
    try:
        with current_app.connection_for_write() as connection:
            return connection.default_channel.client.llen(QUEUE)
    except Exception as exc:
        log.warning("webhooks: cannot read the queue's length: %s", exc)
        return 0


def deliveries_prune(*, owner_id, endpoint_id):
    """Keep the newest WEBHOOKS_DELIVERIES_KEPT ended deliveries of an endpoint (or of a
    user's one-off ones, endpoint_id None); older ended ones go, with their attempts. Called
    as each delivery ends: a few rows at a time, on the (endpoint, created) index."""
    ended = Delivery.objects.filter(owner_id=owner_id, endpoint_id=endpoint_id).exclude(
        status=Delivery.Status.PENDING
    )
    kept = settings.WEBHOOKS_DELIVERIES_KEPT
    old = list(ended.order_by("-created").values_list("pk", flat=True)[kept : kept + 1000])
    if old:
        Delivery.objects.filter(pk__in=old).delete()


def deliveries_cap_pending():
    """End failed the oldest pending deliveries of an endpoint (or of a user's one-off ones)
    beyond WEBHOOKS_PENDING_MAX: a receiver down for a day must not grow the outbox without
    bound. Pending rows are few, and the partial index holds only them."""
    limit, now = settings.WEBHOOKS_PENDING_MAX, timezone.now()
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING)
    crowded = (
        pending.values("owner_id", "endpoint_id")
        .annotate(count=Count("pk"))
        .filter(count__gt=limit)
        .order_by()
    )
    for group in crowded[:100]:
        mine = pending.filter(owner_id=group["owner_id"], endpoint_id=group["endpoint_id"])
        old = list(mine.order_by("-created").values_list("pk", flat=True)[limit : limit + 1000])
        dropped = Delivery.objects.filter(pk__in=old, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.FAILED, next_attempt=None, ended=now,
            error=f"dropped: more than {limit} deliveries were pending (WEBHOOKS_PENDING_MAX)",
        )  # fmt: skip
        log.warning("webhooks: dropped %s pending deliveries of endpoint %s (user %s)", dropped,
                    group["endpoint_id"], group["owner_id"])  # fmt: skip
