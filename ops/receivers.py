"""The runs' metrics, from the engine's transitions (runs.signals): each recorded once its
transaction has committed, so a start that was rolled back counts for nothing, and sent at once
(one round trip for a start, one for an end, which carries what the run's process recorded
meanwhile: its tool calls, retries and time to first event)."""

from django.db import transaction

from runs import metrics, signals

STARTED = metrics.counter(
    "relay_runs_started_total", "Runs started (queued), by kind and trigger", ("kind", "trigger")
)
FINISHED = metrics.counter(
    "relay_runs_finished_total",
    "Runs that reached their terminal status, by kind, trigger and status",
    ("kind", "trigger", "status"),
)
DURATION = metrics.histogram(
    "relay_run_duration_seconds",
    "From a run's start (queued) to its terminal status, waits for a person included",
    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600),
    labels=("kind", "status"),
)
TOKENS = metrics.counter(
    "relay_tokens_total",
    "Model tokens of the runs that ended, by direction: input (prompt) or output",
    ("direction",),
)


def run_started(sender, run, **kwargs):
    if not metrics.enabled():
        return
    kind, trigger = run.kind, run.trigger

    def record():
        STARTED.inc(kind=kind, trigger=trigger)
        metrics.flush()

    transaction.on_commit(record)


def run_waiting(sender, run, **kwargs):
    # what the run recorded before its wait (tool calls) is seen now, not at its end
    if metrics.enabled():
        transaction.on_commit(metrics.flush)


def run_ended(sender, run, **kwargs):
    if not metrics.enabled():
        return
    kind, trigger, status = run.kind, run.trigger, run.status
    seconds = (run.finished - run.created).total_seconds()
    tokens = run.input_tokens, run.output_tokens

    def record():
        FINISHED.inc(kind=kind, trigger=trigger, status=status)
        DURATION.observe(max(0.0, seconds), kind=kind, status=status)
        for direction, count in zip(("input", "output"), tokens, strict=True):
            if count:
                TOKENS.inc(count, direction=direction)
        metrics.flush()

    transaction.on_commit(record)


def connect():
    signals.run_started.connect(run_started, dispatch_uid="ops.metrics")
    signals.run_waiting.connect(run_waiting, dispatch_uid="ops.metrics")
    signals.run_ended.connect(run_ended, dispatch_uid="ops.metrics")
