"""Fault: the worker process is killed (SIGKILL) at random moments of its runs, and a new one
started, as a supervisor would; beat sends the reaper."""

import math
import random
import signal
import statistics
import time
from collections import Counter

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone

from agents import services
from runs import stream
from runs.models import Message, Run

from conftest import at_scale, logged, new_thread, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNS = at_scale(6, 100)
PER_KILL = at_scale(2, 5)  # runs in flight when the worker is killed
# a calculator call, then "The answer is 20." (4 words); or 8 words: 0.6 to 1.2 s a run
PROMPTS = ["calculate (2 + 3) * 4", "Tell me something"]


def tool_calls_per_attempt(events):
    """How often each tool call started within each attempt (an attempt starts at `running`)."""
    attempt, started = 0, Counter()
    for _, kind, data in events:
        if kind == "run.status" and data["status"] == "running":
            attempt += 1
        elif kind == "tool.started":
            started[attempt, data["call"]] += 1
    return started


def calls_started_after_their_result(events):
    """The tool calls that started again after their result was in (a saved result's call must
    never run twice)."""
    done, again = set(), []
    for _, kind, data in events:
        if kind == "tool.done" and data["error"] is None:
            done.add(data["call"])
        elif kind == "tool.started" and data["call"] in done:
            again.append(data["call"])
    return again


def transcript_matches_the_database(run, events):
    """Every saved assistant message is what the log's deltas wrote for it."""
    texts = {}
    for _, kind, data in events:
        if kind == "message.delta":
            texts[data["message"]] = texts.get(data["message"], "") + data["text"]
    saved = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).exclude(content="")
    return all(texts.get(m.pk) == m.content for m in saved)


@override_settings(RUN_MAX_ACTIVE_PER_USER=RUNS)
def test_every_run_completes_once_when_its_worker_is_killed(live, alice):
    # The runs' logs are read at the end, and a user keeps the logs of their newest
    # RUN_EVENTS_RETAINED_PER_USER ended runs only: the runs are shared among enough users.
    users = [alice] + [
        get_user_model().objects.create_user(f"user{n}")
        for n in range(math.ceil(RUNS / settings.RUN_EVENTS_RETAINED_PER_USER))
    ]
    runs, kills = [], []  # kills: when each SIGKILL was sent (wall clock, as runs' `started`)
    live.start_beat()
    try:
        for i in range(0, RUNS, PER_KILL):
            user = users[i // PER_KILL % len(users)]
            threads = [new_thread(user, words=8, delay_ms=150) for _ in range(PER_KILL)]
            batch = [
                services.agent_start(user=user, thread=t, message=PROMPTS[(i + n) % 2]).pk
                for n, t in enumerate(threads)
            ]
            runs += batch
            claimed = Run.objects.filter(pk__in=batch).exclude(status=Run.Status.QUEUED)
            wait_for(claimed.exists, timeout=30, message="the (new) worker to claim a run")
            time.sleep(random.uniform(0, 1.0))
            kills.append(timezone.now())
            live.stop("worker", signal.SIGKILL)
            live.start_worker()
            # each kill lands on one batch: its runs are resumed and end before the next one,
            # as kills rarer than a lease are (a run that lost all its attempts would fail)
            pending = Run.objects.filter(pk__in=batch, status__in=Run.ACTIVE)
            wait_for(lambda p=pending: not p.exists(), timeout=60, message="the batch to end")
        # Every run ends: a lease of 3 s and a reaper every second end a killed worker's runs,
        # and a run whose task the killed worker took unclaimed is enqueued again after
        # RUN_REQUEUE_SECONDS (3 s); the new worker takes a few seconds to start.
        active = Run.objects.filter(pk__in=runs, status__in=Run.ACTIVE)
        wait_for(lambda: not active.exists(), timeout=30, message="every run to end")
        # A run whose ending process was killed between run_finish's UPDATE and its emit is
        # announced by the reaper once the announcer's grace (5 s) has passed.
        wait_for(
            lambda: not stream.unannounced(runs),
            timeout=5 + 5,
            message="every ended run's terminal event in its log",
        )
    finally:
        live.stop("beat")

    outcomes, recovered = Counter(), []
    for run in Run.objects.filter(pk__in=runs):
        events = logged(run)
        assert [e[0] for e in events] == list(range(1, len(events) + 1))
        assert set(tool_calls_per_attempt(events).values()) <= {1}, run.pk
        assert calls_started_after_their_result(events) == [], run.pk
        calls = Message.objects.filter(run=run, role=Message.Role.TOOL)
        assert calls.count() == len(set(calls.values_list("tool_call_id", flat=True)))
        assert transcript_matches_the_database(run, events), run.pk
        terminal = [e for e in events if e[1] == "run.status" and e[2]["status"] in Run.TERMINAL]
        assert [e[2]["status"] for e in terminal] == [run.status], run.pk
        assert events[-1] == terminal[0], f"run {run.pk}: events after its terminal one"
        # one kill each, and RUN_MAX_ATTEMPTS (3) attempts: every run completes
        assert (run.status, run.error) == (Run.Status.COMPLETED, ""), run.pk
        outcomes[run.status, run.resumes] += 1
        if run.resumes:  # `started` is its last claim's: from the kill before it to going on
            kill = max(k for k in kills if k < run.started)
            recovered.append((run.started - kill).total_seconds())
    print(f"{RUNS} runs, {RUNS // PER_KILL} worker kills: (status, resumes): {dict(outcomes)}")
    if recovered:
        print(f"SIGKILL to the resumed run's claim by the next worker: p50"
              f" {statistics.median(recovered):.1f} s, max {max(recovered):.1f} s"
              f" (n={len(recovered)})")  # fmt: skip
    assert any(resumes for _, resumes in outcomes), "no kill landed in the middle of a run"
