"""Stopping and retrying many runs at once (POST /api/runs/stop/ and /api/runs/retry/, and the
admin's actions): each run through the lifecycle, as one at a time would be, and at most
RUN_BULK_MAX of them per call, the oldest first, so that a call stays short."""

from django.conf import settings
from django.db import transaction

from . import kinds
from .errors import ServiceError
from .lifecycle import run_retry, run_stop
from .models import Run


def runs_stop(*, runs):
    """Stop the active runs among `runs` (a queryset). Returns the ids of those asked to stop
    (a queued or waiting one has ended, a running one ends within a second) and whether more
    matched than RUN_BULK_MAX."""
    active = list(runs.filter(status__in=Run.ACTIVE).order_by("created", "pk")[: _limit() + 1])
    chosen = active[: _limit()]
    for run in chosen:
        run_stop(run=run)
    return [run.pk for run in chosen], len(active) > len(chosen)


def runs_retry(*, runs):
    """Retry the failed runs among `runs` whose kind can be retried and that no run retried
    yet: a chain of retries is retried from its last run only. Returns the new runs, the
    refused ones as (run, ServiceError) (its thread busy, the user's cap, the queue down), and
    whether more matched than RUN_BULK_MAX."""
    failed = runs.filter(status=Run.Status.FAILED, kind__in=kinds.retryable(), retries=None)
    matched = list(failed.order_by("created", "pk")[: _limit() + 1])
    chosen = matched[: _limit()]
    started, refused = [], []
    for run in chosen:
        try:
            retry = _retry_once(run)
        except ServiceError as exc:
            refused.append((run, exc))
            continue
        if retry is not None:
            started.append(retry)
    return started, refused, len(matched) > len(chosen)


def _retry_once(run):
    """Retry the run unless a retry of it exists. Its row is locked meanwhile, so two bulk calls
    racing make one retry: the second finds it. The start's enqueue runs at this commit
    (QueueUnavailable is raised here then)."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().filter(pk=run.pk, status=Run.Status.FAILED)
        run = locked.first()
        if run is None or Run.objects.filter(retry_of=run).exists():
            return None
        return run_retry(run=run)


def _limit():
    return settings.RUN_BULK_MAX
