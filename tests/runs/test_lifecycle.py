"""The agent loop and the run lifecycle, executed in this process on the real database, Redis and
(for the OpenAI-compatible client) real HTTP to a local fake model server."""

import json
import threading
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from agents import runner, services
from agents.models import agent_of
from runs import lifecycle, loop, repair, stream, tasks
from runs.models import Message, Run

import fakellm
from conftest import logged, new_thread, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_queue")]


def test_it_streams_a_demo_reply_into_a_saved_message(alice, no_queue):
    thread = new_thread(alice, words=30)
    run = services.agent_start(user=alice, thread=thread, message="Tell me a story")
    no_queue.run()  # the task, with its message as a worker receives it
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert run.attempt == 1
    assert run.output_tokens == 30
    events = logged(run)
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    types = [e[1] for e in events]
    assert types[:2] == ["run.status", "run.status"]
    assert types[-3:] == ["message.done", "usage", "run.status"]
    assert [e[2]["status"] for e in events if e[1] == "run.status"] == [
        "queued",
        "running",
        "completed",
    ]
    reply = thread.messages.get(role="assistant")
    assert "".join(e[2]["text"] for e in events if e[1] == "message.delta") == reply.content
    assert len(reply.content.split()) == 30
    assert events[-3][2]["message"]["content"] == reply.content


def test_it_calls_a_tool_and_reports_its_result(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Please calculate 2 * (3 + 4)")
    loop.execute(run.pk)
    types = [e[1] for e in logged(run)]
    assert types.index("tool.started") < types.index("tool.done")
    done = next(e[2] for e in logged(run) if e[1] == "tool.done")
    assert (done["name"], done["output"], done["error"]) == ("calculator", "14", None)
    roles = list(thread.messages.values_list("role", "content"))
    assert roles[0] == ("user", "Please calculate 2 * (3 + 4)")
    assert roles[2] == ("tool", "14")
    assert roles[3] == ("assistant", "The answer is 14.")


def test_it_turns_a_failing_tool_into_a_result_and_goes_on(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="calculate 1/0")
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    tool = thread.messages.get(role="tool")
    assert tool.is_error
    assert "division by zero" in tool.content
    assert "division by zero" in thread.messages.filter(role="assistant").last().content


def test_it_fails_a_run_that_uses_all_its_turns(alice, settings):
    settings.RUN_MAX_TURNS = 1
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="calculate 6*7")
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error == "the agent used all 1 model turns without finishing"


def test_it_does_not_run_a_run_stopped_before_the_claim(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    lifecycle.run_stop(run=run)
    loop.execute(run.pk)  # the message arrives after the stop
    run.refresh_from_db()
    assert (run.status, run.attempt) == (Run.Status.STOPPED, 0)
    assert not thread.messages.filter(role="assistant").exists()
    assert [e[2]["status"] for e in logged(run)] == ["queued", "stopped"]


def test_it_ends_stopped_when_the_stop_lands_between_claim_and_start(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    # the stop request is recorded but its status change lost the race to a claim
    Run.objects.filter(pk=run.pk).update(stop_requested=timezone.now())
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    assert not thread.messages.filter(role="assistant").exists()


def test_it_stops_a_running_run_and_keeps_the_partial_reply(alice):
    thread = new_thread(alice, words=500, delay_ms=20)
    run = services.agent_start(user=alice, thread=thread, message="Go on and on")
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    storage = stream.StreamStorage()
    while not any(e.type == "message.delta" for e in storage.get_events(run.channel, 0)):
        worker.join(0.02)
    lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
    worker.join(5)
    assert not worker.is_alive()
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    events = logged(run)
    partial = thread.messages.get(role="assistant").content
    assert 0 < len(partial.split()) < 500
    assert "".join(e[2]["text"] for e in events if e[1] == "message.delta") == partial
    assert [e[1] for e in events][-1] == "run.status"


def test_it_fails_a_run_whose_lease_expired_once_it_has_had_all_its_attempts(alice, settings):
    settings.RUN_MAX_ATTEMPTS = 1
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    assert lifecycle.run_claim(run_id=run.pk, worker="gone:1")
    Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    assert repair.runs_reap() == 1
    assert repair.runs_reap() == 0
    run.refresh_from_db()
    assert (run.status, run.error) == (Run.Status.FAILED, "worker lost")
    assert logged(run)[-1][2] == {
        "run": str(run.pk),
        "status": "failed",
        "error": "worker lost",
        "attempt": run.attempt,
    }
    # the lost worker's late finish and a redelivered message change nothing
    assert not lifecycle.run_finish(run=run, status=Run.Status.COMPLETED)
    loop.execute(run.pk)
    assert Run.objects.get(pk=run.pk).status == Run.Status.FAILED
    assert [e[2].get("status") for e in logged(run)].count("failed") == 1


def test_it_leaves_a_run_with_a_live_lease_alone(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    lifecycle.run_claim(run_id=run.pk, worker="alive:1")
    assert repair.runs_reap() == 0


def test_it_runs_an_openai_compatible_model_with_native_tool_calls(alice, settings):
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        settings.LLM_API_KEY = "sk-test"
        arguments = json.dumps({"expression": "6*7"})
        fake.script(
            chunks=[*fakellm.tool_call(0, "call_a", "calculator", arguments), fakellm.usage(9, 4)]
        )
        fake.script(chunks=[fakellm.text("It is "), fakellm.text("42."), fakellm.usage(20, 3)])
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="What is six times seven?")
        loop.execute(run.pk)
        second = fake.requests[1].body
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert (run.input_tokens, run.output_tokens) == (29, 7)
    assert thread.messages.get(role="tool").content == "42"
    assert thread.messages.filter(role="assistant").last().content == "It is 42."
    assert second["model"] == "gpt-test"
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"][0]["function"]["arguments"] == arguments


def test_it_fails_the_run_with_the_model_servers_error(alice, settings):
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.fail(500, "the model is overloaded")
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "500" in run.error
    assert "the model is overloaded" in run.error
    assert not thread.messages.filter(role="assistant").exists()


def test_it_leaves_unanswered_tool_calls_out_of_the_history(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="calc")
    lifecycle.run_stop(run=run)
    thread.append_message(
        role=Message.Role.ASSISTANT,
        tool_calls=[{"id": "c1", "name": "calculator", "arguments": "{}"}],
    )
    assert [m["role"] for m in runner.history_messages(thread, agent_of(thread))] == [
        "system",
        "user",
    ]


def test_it_fails_a_run_over_its_time_limit(alice, settings):
    settings.RUN_TIME_LIMIT = 1
    thread = new_thread(alice, words=500, delay_ms=20)
    run = services.agent_start(user=alice, thread=thread, message="Take your time")
    loop.execute(run.pk)
    run.refresh_from_db()
    assert (run.status, run.error) == (
        Run.Status.FAILED,
        "the run took longer than its time limit (1 s)",
    )
    assert 0 < len(thread.messages.get(role="assistant").content.split()) < 500


def test_it_stores_text_with_null_characters_from_a_model(alice, settings):
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.script(chunks=[fakellm.text("a\u0000b")])
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        loop.execute(run.pk)
    reply = thread.messages.get(role="assistant").content
    assert reply == "a\ufffdb"
    assert "".join(e[2]["text"] for e in logged(run) if e[1] == "message.delta") == reply


def test_it_saves_a_lost_workers_partial_reply_from_the_log_once(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    lifecycle.run_claim(run_id=run.pk, worker="gone:1")
    # what a worker leaves behind when it dies mid-reply: an empty message, and deltas
    message = thread.append_message(role=Message.Role.ASSISTANT, run=run)
    for text in ["Half ", "a ", "thought"]:
        stream.emit(run.pk, "message.delta", message=message.pk, text=text)
    Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    # the reapers beat queued while no worker was alive, run at once by the next worker
    barrier = threading.Barrier(4)

    def reap():
        barrier.wait()
        with loop.closing_connection():
            repair.runs_reap()

    reapers = [threading.Thread(target=reap) for _ in range(4)]
    for reaper in reapers:
        reaper.start()
    for reaper in reapers:
        reaper.join(5)
    message.refresh_from_db()
    assert message.content == "Half a thought"
    types = [e[1] for e in logged(run)]
    assert types[-5:] == ["message.delta"] * 3 + ["message.done", "run.status"]


def test_a_runs_terminal_event_goes_into_its_log_once(alice):
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    for status in ["stopped", "failed", "stopped"]:
        stream.emit(run.pk, "run.status", status=status, error="")
    statuses = [e[2]["status"] for e in logged(run) if e[1] == "run.status"]
    assert statuses == ["queued", "stopped"]


def test_the_reaper_announces_an_end_whose_process_died_before_announcing_it(alice):
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    # ended in the database, then killed before its emit
    finished = timezone.now() - timedelta(seconds=10)
    Run.objects.filter(pk=run.pk).update(status="completed", finished=finished)
    repair.runs_reap()
    repair.runs_reap()
    assert [e[2]["status"] for e in logged(run) if e[1] == "run.status"] == ["queued", "completed"]


def test_the_reaper_leaves_announced_and_just_ended_runs_alone(alice):
    announced = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    lifecycle.run_finish(run=announced, status="completed")
    Run.objects.filter(pk=announced.pk).update(finished=timezone.now() - timedelta(seconds=10))
    just_ended = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    Run.objects.filter(pk=just_ended.pk).update(status="completed", finished=timezone.now())
    repair.runs_reap()
    for run in (announced, just_ended):
        assert [e[1] for e in logged(run)].count("run.status") == 1 + (run is announced)


def test_the_reaper_enqueues_an_unclaimed_run_again_once_a_period(alice, no_queue, settings):
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Hello")
    sent = no_queue.args(tasks.execute_run_task)
    repair.runs_reap()
    assert no_queue.args(tasks.execute_run_task) == sent == [[str(run.pk)]]  # too early
    waited = timezone.now() - timedelta(seconds=settings.RUN_REQUEUE_SECONDS + 1)
    Run.objects.filter(pk=run.pk).update(created=waited)
    repair.runs_reap()
    repair.runs_reap()
    assert no_queue.args(tasks.execute_run_task) == [[str(run.pk)]] * 2  # the start's, one more


def test_it_drops_a_lost_workers_empty_reply(alice):
    thread = new_thread(alice)
    run = services.agent_start(user=alice, thread=thread, message="Hello")
    lifecycle.run_claim(run_id=run.pk, worker="gone:1")
    thread.append_message(role=Message.Role.ASSISTANT, run=run)
    Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    repair.runs_reap()
    assert not thread.messages.filter(role="assistant").exists()


def test_it_honours_a_stop_whose_redis_flag_was_lost(alice, settings):
    settings.RUN_HEARTBEAT_SECONDS = 0.5
    thread = new_thread(alice, words=500, delay_ms=20)
    run = services.agent_start(user=alice, thread=thread, message="Go on")
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    wait_for_status(run.pk, Run.Status.RUNNING)
    Run.objects.filter(pk=run.pk).update(stop_requested=timezone.now())  # the column only
    worker.join(5)
    assert Run.objects.get(pk=run.pk).status == Run.Status.STOPPED


def test_it_runs_a_run_claimed_while_redis_is_away(alice, monkeypatch):
    thread = new_thread(alice, words=5, delay_ms=0)
    run = services.agent_start(user=alice, thread=thread, message="Hello")

    def away(run_ids):
        raise redis.ConnectionError("Connection refused.")

    monkeypatch.setattr(stream, "stop_flags", away)
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert len(thread.messages.get(role="assistant").content.split()) == 5


def test_it_cuts_a_silent_model_off_at_the_time_limit(alice, settings):
    settings.RUN_TIME_LIMIT = 1
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.script(silent=True)  # takes the request, then says nothing for LLM_TIMEOUT (120 s)
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        started = time.monotonic()
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        worker.join(3)
        took = time.monotonic() - started
        assert not worker.is_alive(), "the run was still running 3 s into a 1 s time limit"
    run.refresh_from_db()
    assert (run.status, run.error) == (
        Run.Status.FAILED,
        "the run took longer than its time limit (1 s)",
    )
    assert took < 2
    assert logged(run)[-1][2]["status"] == "failed"


def test_a_stop_before_the_time_limit_still_ends_the_run_stopped(alice, settings):
    settings.RUN_TIME_LIMIT = 2
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.script(silent=True)
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        wait_for(lambda: fake.requests, timeout=5, message="the request to the model")
        lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
        worker.join(3)
        assert not worker.is_alive()
    assert Run.objects.get(pk=run.pk).status == Run.Status.STOPPED


def test_a_worker_that_lost_its_lease_stops_the_run_and_writes_nothing_more(alice, settings):
    settings.RUN_HEARTBEAT_SECONDS = 3600  # the test renews, below
    settings.RUN_MAX_ATTEMPTS = 1  # the reaper ends it: no other attempt writes either
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        # the second piece waits in the delta window, unsent, when the model goes quiet
        fake.script([fakellm.text("Half "), fakellm.text("a reply")], hang=True)
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        wait_for(lambda: "message.delta" in [e[1] for e in logged(run)], message="a delta")
        # the worker was slow (a long pause): its lease lapsed and the reaper ended the run
        Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
        assert repair.runs_reap() == 1
        reaped = logged(run)
        assert reaped[-1][2] == {
            "run": str(run.pk),
            "status": "failed",
            "error": "worker lost",
            "attempt": 1,
        }
        loop.worker.renew(loop.worker.active())
        worker.join(1)
        assert not worker.is_alive(), "the run went on after its worker lost the lease"
    assert logged(run) == reaped
    assert thread.messages.get(role="assistant").content == "Half "  # what the reaper saved
    run.refresh_from_db()
    assert (run.status, run.error) == (Run.Status.FAILED, "worker lost")


def test_a_worker_frozen_past_its_lease_writes_nothing_before_it_asks(alice, settings):
    settings.RUN_HEARTBEAT_SECONDS = 3600  # no renewal comes from the heartbeat
    settings.RUN_MAX_ATTEMPTS = 1
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.script([fakellm.text(f"word{i} ") for i in range(20)], delay=0.2)
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        wait_for(lambda: "message.delta" in [e[1] for e in logged(run)], message="a delta")
        # what a process frozen for longer than its lease finds when it wakes: no renewal for
        # that long, and the reaper has ended the run meanwhile
        [lease] = loop.worker.active().values()
        lease.renewed -= settings.RUN_LEASE_SECONDS
        Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
        assert repair.runs_reap() == 1
        reaped = logged(run)
        worker.join(2)
        assert not worker.is_alive(), "the run went on after its worker lost the lease"
    assert logged(run) == reaped
