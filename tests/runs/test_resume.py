"""A run whose worker is lost is resumed by another from what the database holds: the lost
attempt's half-written reply kept and marked interrupted (and left out of the model's history),
finished tool results kept, a call left without its result made again only if its tool only
reads. Executed in this process: the test plays the lost worker (a lease that lapsed), the
reaper and the next worker (`no_queue`)."""

import dataclasses
import threading
from datetime import timedelta

import pytest
from celery.exceptions import Reject
from django.conf import settings
from django.utils import timezone

from agents import runner, services, tools
from runs import loop, repair, tasks
from runs.models import Message, Run

from conftest import logged, new_thread, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def executing(run, until=None, message="a delta"):
    """Execute `run` in a thread of this process (the worker to lose), until `until()` (by
    default: its reply is streaming); the thread."""
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    wait_for(until or (lambda: "message.delta" in [k for _, k, _ in logged(run)]), message=message)
    return worker


def lose_the_worker(run, worker_thread):
    """The worker stops renewing the run's lease (a process frozen past it: it will ask the
    database before it writes again), the reaper passes, and the thread the lost attempt ran in
    gives up, finding the run no longer its own."""
    lease = loop.worker.active()[str(run.pk)]
    lease.renewed -= settings.RUN_LEASE_SECONDS
    Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    failed = repair.runs_reap()
    worker_thread.join(10)
    assert not worker_thread.is_alive()
    return failed


def statuses(run):
    return [(d["status"], d["error"], d["attempt"]) for _, k, d in logged(run) if k == "run.status"]


def test_a_lost_attempts_half_reply_is_kept_and_the_next_attempt_answers_whole(
    alice, no_queue, settings
):
    settings.RUN_HEARTBEAT_SECONDS = 3600  # the lease lapses when the test says
    thread = new_thread(alice, words=400, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="Tell me something")
    no_queue.sent.clear()
    worker = executing(run)
    assert lose_the_worker(run, worker) == 0  # resumed, not failed
    run.refresh_from_db()
    assert (run.status, run.resumes) == (Run.Status.QUEUED, 1)
    cut = thread.messages.get(role="assistant")
    assert cut.interrupted and cut.content  # what the stream had carried, kept as it was
    assert runner.history_messages(thread, alice.agents.get())[-1]["role"] == "user"

    no_queue.run()  # the next worker
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    whole = thread.messages.filter(role="assistant").last()
    assert not whole.interrupted and len(whole.content.split()) == 400
    assert statuses(run) == [
        ("queued", "", 0), ("running", "", 1), ("queued", "worker lost", 1), ("running", "", 2),
        ("completed", "", 2),
    ]  # fmt: skip
    events = logged(run)
    assert [number for number, _, _ in events] == list(range(1, len(events) + 1))


@pytest.fixture
def slow_tools(monkeypatch):
    """`calculator` (which only reads) and `send` (which does not) block until released, and
    count their calls."""
    release, calls = threading.Event(), []

    def slow(name, value):
        def func(**arguments):
            calls.append(name)
            release.wait(10)
            return value

        return func

    monkeypatch.setitem(tools._registry, "calculator", dataclasses.replace(
        tools.get("calculator"), func=slow("calculator", 42), timeout=15))  # fmt: skip
    empty = {"type": "object", "properties": {}, "additionalProperties": False}
    tools.register("send", "sends something", empty, timeout=15)(slow("send", "sent"))
    yield release, calls
    release.set()
    tools.unregister("send")


def test_calls_a_lost_worker_left_without_results_are_made_again_only_if_they_only_read(
    alice, no_queue, settings, slow_tools
):
    release, calls = slow_tools
    settings.RUN_HEARTBEAT_SECONDS = 3600
    thread = new_thread(alice, tools=["calculator", "send"])
    message = '/tool calculator {"expression": "6*7"}\n/tool send'
    run = services.agent_start(user=alice, thread=thread, message=message)
    no_queue.sent.clear()
    worker = executing(run, lambda: len(calls) == 2, "both calls to start")
    lose_the_worker(run, worker)  # the lost thread leaves its calls behind
    release.set()  # and they end, unheard
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    assert sorted(calls) == ["calculator", "calculator", "send"]  # send: once, whatever happens
    results = {m.name: m.content for m in thread.messages.filter(role=Message.Role.TOOL)}
    assert results["calculator"] == "42"
    assert results["send"].startswith("Error: this call was interrupted (its worker was lost)")


def test_a_finished_tool_result_is_kept_and_its_call_not_made_again(
    alice, no_queue, settings, slow_tools
):
    release, calls = slow_tools
    release.set()  # they answer at once
    settings.RUN_HEARTBEAT_SECONDS = 3600
    thread = new_thread(alice, tools=["send"], words=300, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="/tool send")
    no_queue.sent.clear()
    # the result is saved, and the model's reply after it is streaming when the worker is lost
    worker = executing(run)
    lose_the_worker(run, worker)
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    assert calls == ["send"]
    assert thread.messages.filter(role=Message.Role.TOOL).count() == 1


def test_a_run_that_lost_every_attempt_fails_with_worker_lost(alice, no_queue, settings):
    settings.RUN_HEARTBEAT_SECONDS = 3600
    settings.RUN_MAX_ATTEMPTS = 2
    thread = new_thread(alice, words=1000, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="Hi")
    no_queue.sent.clear()
    for _ in range(2):
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        wait_for(lambda: Run.objects.get(pk=run.pk).status == Run.Status.RUNNING, message="claim")
        wait_for(lambda: Run.objects.get(pk=run.pk).lease_owner not in ("", "reaper"),
                 message="a lease")  # fmt: skip
        failed = lose_the_worker(run, worker)
        no_queue.sent.clear()
    run.refresh_from_db()
    assert (failed, run.status, run.error, run.resumes) == (1, Run.Status.FAILED, "worker lost", 1)
    assert statuses(run)[-1] == ("failed", "worker lost", 2)


def test_a_lost_run_whose_stop_was_asked_ends_stopped(alice, no_queue, settings):
    settings.RUN_HEARTBEAT_SECONDS = 3600
    thread = new_thread(alice, words=1000, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="Hi")
    no_queue.sent.clear()
    worker = executing(run)
    Run.objects.filter(pk=run.pk).update(stop_requested=timezone.now())  # the flag never came
    lose_the_worker(run, worker)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    assert no_queue.sent == []


def test_a_worker_shutting_down_hands_its_runs_back_for_another_to_resume(
    alice, no_queue, monkeypatch
):
    monkeypatch.setattr(loop.worker, "shutting_down", False)  # and back after the test
    thread = new_thread(alice, words=400, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="Tell me something")
    no_queue.sent.clear()
    worker = executing(run)
    loop.worker.hand_back()  # what a SIGTERM does (runs.tasks.hand_back_runs)
    worker.join(5)
    assert not worker.is_alive()  # at once, not at the end of the reply
    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.resumes) == (Run.Status.QUEUED, "", 0)
    cut = thread.messages.get(role="assistant")
    assert cut.interrupted and 0 < len(cut.content.split()) < 400
    assert len(no_queue.sent) == 1  # its task, for any worker
    with pytest.raises(Reject):  # not this one, which is shutting down
        tasks.execute_run_task(str(run.pk))
    loop.worker.shutting_down = False  # this process is the next worker now
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    assert len(thread.messages.filter(role="assistant").last().content.split()) == 400
    assert statuses(run) == [
        ("queued", "", 0), ("running", "", 1), ("queued", "its worker shut down", 1),
        ("running", "", 2), ("completed", "", 2),
    ]  # fmt: skip


def test_a_stop_asked_before_the_shutdown_stays_a_stop(alice, no_queue, monkeypatch):
    monkeypatch.setattr(loop.worker, "shutting_down", False)
    thread = new_thread(alice, words=400, delay_ms=10)
    run = services.agent_start(user=alice, thread=thread, message="Tell me something")
    no_queue.sent.clear()
    worker = executing(run)
    Run.objects.filter(pk=run.pk).update(stop_requested=timezone.now())  # its flag not yet seen
    loop.worker.hand_back()
    worker.join(5)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    assert no_queue.sent == []
