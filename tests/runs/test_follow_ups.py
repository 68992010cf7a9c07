"""Follow-ups: messages sent to a busy thread with `if_busy: "enqueue"`, each starting its run
when the run before it ends, however it ends, and never lost when that start is refused."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents import services
from runs import lifecycle, repair
from runs.errors import ThreadBusy, TooManyFollowUps
from runs.models import FollowUp, Run

from conftest import new_thread

pytestmark = [pytest.mark.django_db(transaction=True)]


def drain(no_queue):
    """Be the worker until nothing more is sent (each follow-up's run is sent as the one before
    it ends)."""
    while no_queue.sent:
        no_queue.run()


def conversation(thread):
    return list(thread.messages.order_by("position").values_list("role", "content"))


def enqueue(user, thread, message):
    return services.agent_start(user=user, thread=thread, message=message, if_busy="enqueue")


def test_it_runs_follow_ups_after_the_active_run_in_order(alice, no_queue):
    thread = new_thread(alice, words=5)
    first = services.agent_start(user=alice, thread=thread, message="one")
    queued = [enqueue(alice, thread, text) for text in ["two", "three", "four"]]
    assert all(isinstance(f, FollowUp) for f in queued)
    assert [f.position for f in queued] == [1, 2, 3]
    assert conversation(thread) == [("user", "one")]  # held until their turn
    drain(no_queue)
    runs = [first] + [FollowUp.objects.get(pk=f.pk).run for f in queued]
    for run in runs:
        run.refresh_from_db()
        assert run.status == Run.Status.COMPLETED
    roles = [role for role, _ in conversation(thread)]
    assert roles == ["user", "assistant"] * 4
    assert [c for r, c in conversation(thread) if r == "user"] == ["one", "two", "three", "four"]
    assert [m.run_id for m in thread.messages.filter(role="user")] == [r.pk for r in runs]
    # the model saw the reply before each follow-up: system, one, its reply (5 words), two
    assert runs[1].input_tokens == runs[0].input_tokens + 5 + 1
    assert {f.status for f in FollowUp.objects.all()} == {FollowUp.Status.STARTED}


def test_it_queues_behind_follow_ups_even_when_the_thread_is_idle(alice, no_queue, settings):
    thread = new_thread(alice, words=3)
    run = services.agent_start(user=alice, thread=thread, message="one")
    held = enqueue(alice, thread, "two")
    settings.RUN_MAX_ACTIVE_PER_USER = 0  # the follow-up's start is refused when its turn comes
    lifecycle.run_finish(run=run, status=Run.Status.COMPLETED)
    held.refresh_from_db()
    assert (held.status, held.run) == (FollowUp.Status.PENDING, None)
    assert "active runs" in held.error
    # the thread is idle, but what waits goes first: a plain start is refused, a queued one waits
    with pytest.raises(ThreadBusy):
        services.agent_start(user=alice, thread=thread, message="jump the queue")
    assert isinstance(enqueue(alice, thread, "three"), FollowUp)
    settings.RUN_MAX_ACTIVE_PER_USER = 10
    repair.runs_reap()
    drain(no_queue)
    assert [c for r, c in conversation(thread) if r == "user"] == ["one", "two", "three"]


def test_it_refuses_follow_ups_beyond_the_limit(alice, no_queue, settings):
    settings.RUN_FOLLOW_UPS_MAX = 2
    thread = new_thread(alice)
    services.agent_start(user=alice, thread=thread, message="one")
    enqueue(alice, thread, "two")
    enqueue(alice, thread, "three")
    with pytest.raises(TooManyFollowUps):
        enqueue(alice, thread, "four")
    assert FollowUp.objects.count() == 2


def lapse(run):
    lifecycle.run_claim(run_id=run.pk, worker="gone:1")
    Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    repair.runs_reap()


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda run: lifecycle.run_finish(run=run, status="failed", error="x"),
                     id="failed"),
        pytest.param(lambda run: lifecycle.run_stop(run=run), id="stopped"),
        pytest.param(lapse, id="reaped"),
    ],
)  # fmt: skip
def test_a_follow_up_starts_however_the_run_before_it_ends(alice, no_queue, settings, end):
    settings.RUN_MAX_ATTEMPTS = 1  # a lapsed lease ends the run failed, not resumed
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    follow_up = enqueue(alice, thread, "two")
    end(run)
    follow_up.refresh_from_db()
    assert Run.objects.get(pk=run.pk).status in Run.TERMINAL
    assert follow_up.status == FollowUp.Status.STARTED
    assert follow_up.run.status == Run.Status.QUEUED
    assert conversation(thread)[-1] == ("user", "two")


def test_a_follow_up_the_queue_refused_stays_pending_and_starts_later(alice, no_queue, monkeypatch):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    follow_up = enqueue(alice, thread, "two")

    def down(run_id):
        raise ConnectionError("the broker is down")

    # the broker down for this end only (undo() would drop no_queue too, and a live worker
    # left by an end-to-end test would then claim the run)
    with monkeypatch.context() as broker:
        broker.setattr(lifecycle, "send_run_task", down)
        lifecycle.run_finish(run=run, status=Run.Status.COMPLETED)
    follow_up.refresh_from_db()
    assert (follow_up.status, follow_up.run) == (FollowUp.Status.PENDING, None)
    assert "queue is unavailable" in follow_up.error
    assert conversation(thread) == [("user", "one")]  # its message went back with its run
    assert Run.objects.count() == 1
    repair.runs_reap()
    follow_up.refresh_from_db()
    assert follow_up.status == FollowUp.Status.STARTED
    assert (follow_up.run.status, follow_up.error) == (Run.Status.QUEUED, "")
    assert conversation(thread)[-1] == ("user", "two")


def test_a_follow_up_refused_for_good_fails_visibly_and_the_next_starts(alice, no_queue):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    lost = enqueue(alice, thread, "two")
    FollowUp.objects.filter(pk=lost.pk).update(details={"agent": 999_999})  # its agent is gone
    nxt = enqueue(alice, thread, "three")
    lifecycle.run_finish(run=run, status=Run.Status.COMPLETED)
    lost.refresh_from_db()
    nxt.refresh_from_db()
    assert (lost.status, lost.error) == (
        FollowUp.Status.FAILED,
        "The agent this message was sent to no longer exists.",
    )
    assert nxt.status == FollowUp.Status.STARTED
    assert conversation(thread)[-1] == ("user", "three")


def test_a_follow_up_starts_once_whoever_races_to_start_it(alice, no_queue):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    follow_up = enqueue(alice, thread, "two")
    Run.objects.filter(pk=run.pk).update(status="completed")  # ended, its process gone
    started = lifecycle.follow_ups_start(thread_id=thread.pk)
    Run.objects.filter(pk=started.pk).update(status="completed")  # and that one too, at once
    assert lifecycle.follow_ups_start(thread_id=thread.pk) is None  # the reaper, late
    repair.runs_reap()
    assert FollowUp.objects.get(pk=follow_up.pk).run == started
    assert Run.objects.count() == 2
    assert [c for r, c in conversation(thread) if r == "user"] == ["one", "two"]


def test_an_interrupt_cancels_the_queued_messages_and_goes_next(alice, no_queue):
    thread = new_thread(alice)
    services.agent_start(user=alice, thread=thread, message="one")
    queued = enqueue(alice, thread, "two")
    run = services.agent_start(user=alice, thread=thread, message="now", if_busy="interrupt")
    queued.refresh_from_db()
    assert queued.status == FollowUp.Status.CANCELLED
    assert Run.objects.active_on(thread).get() == run
    assert [c for r, c in conversation(thread) if r == "user"] == ["one", "now"]


def test_deleting_the_thread_deletes_its_follow_ups(alice, no_queue, settings):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    enqueue(alice, thread, "two")
    settings.RUN_MAX_ACTIVE_PER_USER = 0
    lifecycle.run_finish(run=run, status=Run.Status.COMPLETED)
    thread.delete_if_idle()
    assert not FollowUp.objects.exists()


def test_the_thread_stream_tells_which_follow_up_a_run_started_for(alice, no_queue, monkeypatch):
    told = []
    announce = lifecycle.stream.announce_run_started

    def record(run, follow_up=None):
        told.append((str(run.pk), follow_up))
        announce(run, follow_up=follow_up)

    monkeypatch.setattr(lifecycle.stream, "announce_run_started", record)
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="one")
    follow_up = enqueue(alice, thread, "two")
    lifecycle.run_stop(run=run)
    follow_up.refresh_from_db()
    assert told == [(str(run.pk), None), (str(follow_up.run_id), follow_up.pk)]
