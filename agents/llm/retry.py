"""Retries of a model call that failed before any output, each announced by a Retrying item."""

import contextlib
import datetime
import itertools
import math
import random
import time
from email.utils import parsedate_to_datetime

from django.conf import settings
from django.utils import timezone

from runs import metrics

from .base import ModelError, Retrying, TextDelta, ToolCall

BACKOFF_BASE = 1.0  # seconds before the first retry, at most; doubled for each next one
BACKOFF_CAP = 30.0

RETRIES = metrics.counter(
    "relay_model_retries_total", "Model calls that failed before any output and were tried again"
)


class Unavailable(ModelError):
    """A failure another attempt may not meet: no connection, a timeout, 408, 409, 429, 5xx.
    `retry_after` is how long the server asked us to wait, in seconds, if it did."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


def with_retries(attempt, *, stop, deadline=None):
    """The items of `attempt()`, a generator of one call, tried again while it raises
    Unavailable before any text or tool call: up to LLM_MAX_RETRIES times, never waiting past
    `deadline`. A stop during a wait ends the stream quietly."""
    for retry in itertools.count(1):
        output = False
        try:
            for item in attempt():
                output = output or isinstance(item, TextDelta | ToolCall)
                yield item
            return
        except Unavailable as e:
            # After output a retry would repeat it: the run fails with the provider's error.
            if output or retry > settings.LLM_MAX_RETRIES:
                raise
            delay = e.retry_after if e.retry_after is not None else backoff(retry)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            RETRIES.inc()
            yield Retrying(retry, round(delay, 1), str(e))
            if stop.wait(delay):
                return


def backoff(retry):
    """Full jitter: retries that failed together do not come back together."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (retry - 1)))


def retry_after(headers):
    """Seconds from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date); or None."""
    for name, unit in (("retry-after-ms", 1000), ("retry-after", 1)):
        with contextlib.suppress(ValueError):
            seconds = float(headers.get(name) or "nan") / unit
            if math.isfinite(seconds):
                return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(headers.get("retry-after") or "")
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # HTTP dates are in GMT
    return max(0.0, (when - timezone.now()).total_seconds())
