"""The gauges read at scrape time, from where their value is exact: the database (runs active),
the broker (queue lengths) and Redis (open streams)."""

from functools import cache
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone

from runs import metrics, stream
from runs.models import Run

# kombu's Redis transport keeps a queue in a list of its name, and the messages sent with a
# priority in one list per priority step beside it
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def runs_active():
    try:
        counts = dict(Run.objects.active().order_by().values_list("status").annotate(n=Count("pk")))
    finally:
        connection.close()
    return {(status,): counts.get(status, 0) for status in Run.ACTIVE}


def oldest_running():
    try:
        started = Run.objects.filter(status=Run.Status.RUNNING).aggregate(m=Min("started"))["m"]
    finally:
        connection.close()
    return 0 if started is None else max(0.0, (timezone.now() - started).total_seconds())


@cache
def _broker(url):
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def queue_lengths():
    """Messages waiting in each of METRICS_QUEUES, on a Redis broker (LLEN); None on another
    broker, whose queues are for its own tools to watch."""
    url = settings.CELERY_BROKER_URL
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        return None
    queues = settings.METRICS_QUEUES
    with _broker(url).pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
            for step in PRIORITY_STEPS:
                pipe.llen(f"{queue}{PRIORITY_SEP}{step}")
        lengths = pipe.execute()
    per_queue = 1 + len(PRIORITY_STEPS)
    return {
        (queue,): sum(lengths[i * per_queue : (i + 1) * per_queue])
        for i, queue in enumerate(queues)
    }


metrics.gauge(
    "relay_runs_active",
    "Runs active now, by status: queued, running, waiting (for a person)",
    ("status",),
    read=runs_active,
    source="database",
)
metrics.gauge(
    "relay_run_oldest_running_seconds",
    "How long the longest-running run has been running since its claim (0: none is running)",
    read=oldest_running,
    source="database",
)
metrics.gauge(
    "relay_queue_length",
    "Messages waiting in each Celery queue of the broker (LLEN)",
    ("queue",),
    read=queue_lengths,
    source="broker",
)
metrics.gauge(
    "relay_streams_open",
    "Event streams (SSE) open now across the web processes; in GRIP mode Pushpin holds the run"
    " streams, and counts them itself",
    read=stream.open_streams,
    source="redis",
)
