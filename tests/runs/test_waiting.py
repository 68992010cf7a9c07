"""Runs that wait for a person: approvals of tool calls and ask_user questions, answered through
the API; the run parks (no worker, no lease), is enqueued again by the answer, and goes on on the
same stream. Executed in this process (the test is the worker: `no_queue`)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs import lifecycle, repair
from runs.models import InputRequest, Run

from conftest import logged, waiting_run

pytestmark = [pytest.mark.django_db(transaction=True)]

CALC = '/tool calculator {"expression": "6*7"}'


def respond(api, run, **body):
    return api.post(f"/api/runs/{run.pk}/respond/", body, format="json")


def kinds(run):
    return [kind for _, kind, _ in logged(run)]


def test_an_approved_call_runs_after_the_wait_on_the_same_stream(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue)
    assert run.status == Run.Status.WAITING
    assert (run.lease_owner, run.lease_expires) == ("", None)  # it holds no worker
    [request] = run.requests.all()
    answer = alice_api.get(f"/api/runs/{run.pk}/").data
    assert answer["status"] == "waiting"
    assert answer["pending"] == [{
        "id": request.pk, "kind": "approval", "call": request.call, "name": "calculator",
        "arguments": '{"expression": "6*7"}', "question": "",
    }]  # fmt: skip
    requested = [data for _, kind, data in logged(run) if kind == "input.requested"]
    assert requested == [{"run": str(run.pk), "request": answer["pending"][0]}]
    assert "tool.started" not in kinds(run)  # nothing ran before the person said so

    r = respond(alice_api, run, request=request.pk, approve=True)
    assert r.status_code == 202, r.data
    assert (r.data["status"], r.data["pending"]) == ("queued", [])
    no_queue.run()  # any worker: it goes on from the decision
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    events = logged(run)
    assert [number for number, _, _ in events] == list(range(1, len(events) + 1))
    statuses = [data["status"] for _, kind, data in events if kind == "run.status"]
    assert statuses == ["queued", "running", "waiting", "queued", "running", "completed"]
    resolved = next(data["request"] for _, kind, data in events if kind == "input.resolved")
    assert (resolved["id"], resolved["status"]) == (request.pk, "approved")
    done = next(data for _, kind, data in events if kind == "tool.done")
    assert (done["output"], done["error"]) == ("42", None)
    assert run.thread.messages.last().content == "The answer is 42."
    assert run.attempt == 2


def test_an_approval_may_change_the_arguments(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue)
    request = run.requests.get()
    r = respond(alice_api, run, request=request.pk, approve=True,
                arguments='{"expression": "6*8"}')  # fmt: skip
    assert r.status_code == 202, r.data
    no_queue.run()
    started = next(data for _, kind, data in logged(run) if kind == "tool.started")
    assert started["arguments"] == '{"expression": "6*8"}'
    assert run.thread.messages.last().content == "The answer is 48."


def test_a_denied_call_gives_the_model_the_reason(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue)
    r = respond(alice_api, run, request=run.requests.get().pk, approve=False, reason="not now")
    assert r.status_code == 202, r.data
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    done = next(data for _, kind, data in logged(run) if kind == "tool.done")
    assert done["error"] == "the person denied this call: not now"
    assert "Error: the person denied this call: not now" in run.thread.messages.last().content


def test_ask_user_waits_for_the_answer(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue, message='/tool ask_user {"question": "Which city?"}')
    assert run.status == Run.Status.WAITING
    [pending] = alice_api.get(f"/api/runs/{run.pk}/").data["pending"]
    assert (pending["kind"], pending["question"]) == ("question", "Which city?")
    r = respond(alice_api, run, request=pending["id"])
    assert r.status_code == 400 and "answer" in r.data["field"]
    r = respond(alice_api, run, request=pending["id"], answer="Oslo")
    assert r.status_code == 202, r.data
    no_queue.run()
    assert run.thread.messages.last().content == "The ask_user tool answered: Oslo"


def test_several_calls_of_a_turn_each_wait_and_the_run_goes_on_once_all_are_answered(
    alice, alice_api, no_queue
):
    message = CALC + '\n/tool ask_user {"question": "Sure?"}\n/tool current_time'
    run = waiting_run(alice, no_queue, message=message,
                      tools=["calculator", "ask_user", "current_time"])  # fmt: skip
    approval, question = run.requests.order_by("id")
    # the call that needs nobody ran at once
    assert [d["name"] for _, k, d in logged(run) if k == "tool.done"] == ["current_time"]
    r = respond(alice_api, run, request=approval.pk, approve=True)
    assert (r.status_code, r.data["status"]) == (202, "waiting")
    assert no_queue.sent == []  # nothing to do until the other answer
    r = respond(alice_api, run, request=question.pk, answer="Yes")
    assert (r.status_code, r.data["status"]) == (202, "queued")
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    reply = run.thread.messages.last().content
    assert reply.startswith("The answer is 42. The ask_user tool answered: Yes The current_time")
    done = [d["name"] for _, k, d in logged(run) if k == "tool.done"]
    # the first at once; the two decided calls after the answers, at once (in either order)
    assert done[0] == "current_time" and sorted(done[1:]) == ["ask_user", "calculator"]


def test_answers_that_cannot_be_taken(alice, alice_api, bob_api, no_queue):
    run = waiting_run(alice, no_queue)
    request = run.requests.get()
    assert respond(bob_api, run, request=request.pk, approve=True).status_code == 404
    r = respond(alice_api, run, request=request.pk + 1000, approve=True)
    assert (r.status_code, r.data["field"]) == (400, "request")
    r = respond(alice_api, run, request=request.pk)
    assert (r.status_code, r.data["field"]) == (400, "approve")
    r = respond(alice_api, run, request=request.pk, approve=True, arguments="[1, 2]")
    assert (r.status_code, r.data["field"]) == (400, "arguments")
    assert "JSON object" in r.data["detail"]
    r = respond(alice_api, run, request=request.pk, approve=True, arguments="{")
    assert (r.status_code, r.data["field"]) == (400, "arguments")
    assert respond(alice_api, run, request=request.pk, approve=True).status_code == 202
    r = respond(alice_api, run, request=request.pk, approve=False)
    assert r.status_code == 409 and "not pending" in r.data["detail"]


def test_a_waiting_run_keeps_its_thread_busy_and_counts_toward_the_cap(
    alice, alice_api, no_queue, settings
):
    run = waiting_run(alice, no_queue)
    r = alice_api.post(f"/api/threads/{run.thread_id}/runs/", {"message": "Hi"}, format="json")
    assert (r.status_code, r.data["code"]) == (409, "thread_busy")
    settings.RUN_MAX_ACTIVE_PER_USER = 1
    r = alice_api.post("/api/threads/", {}, format="json")
    r = alice_api.post(f"/api/threads/{r.data['id']}/runs/", {"message": "Hi"}, format="json")
    assert (r.status_code, r.data["code"]) == (429, "too_many_runs")


def test_a_stop_ends_a_waiting_run_at_once_and_cancels_what_it_asked(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue)
    request = run.requests.get()
    r = alice_api.post(f"/api/runs/{run.pk}/stop/")
    assert (r.status_code, r.data["status"]) == (202, "stopped")
    request.refresh_from_db()
    assert request.status == InputRequest.Status.CANCELLED
    resolved = [d["request"]["status"] for _, k, d in logged(run) if k == "input.resolved"]
    assert resolved == ["cancelled"]
    assert kinds(run)[-1] == "run.status"
    assert respond(alice_api, run, request=request.pk, approve=True).status_code == 409


def test_a_request_nobody_answers_ends_the_run_after_run_wait_timeout(alice, no_queue, settings):
    run = waiting_run(alice, no_queue)
    settings.RUN_WAIT_TIMEOUT = 3600
    assert repair.runs_reap() == 0
    assert Run.objects.get(pk=run.pk).status == Run.Status.WAITING  # not yet
    InputRequest.objects.filter(run=run).update(created=timezone.now() - timedelta(hours=2))
    repair.runs_reap()
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error == "nobody answered what the run asked within 3600 s (RUN_WAIT_TIMEOUT)"
    assert run.requests.get().status == InputRequest.Status.EXPIRED


def test_an_answer_racing_a_stop_has_one_outcome(alice, no_queue):
    for _ in range(10):
        run = waiting_run(alice, no_queue)
        request = run.requests.get()
        outcomes = {}

        def answer(run=run, request=request, outcomes=outcomes):
            try:
                lifecycle.run_respond(run=run, request=request.pk, approve=True)
                outcomes["answer"] = "taken"
            except lifecycle.ServiceConflict:
                outcomes["answer"] = "refused"
            finally:
                connection.close()

        def stop(run=run):
            lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
            connection.close()

        threads = [threading.Thread(target=answer), threading.Thread(target=stop)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        no_queue.run()  # a task the answer sent finds the run stopped
        run.refresh_from_db()
        request.refresh_from_db()
        assert run.status == Run.Status.STOPPED
        terminal = [d for _, k, d in logged(run) if k == "run.status" and d["status"] == "stopped"]
        assert len(terminal) == 1
        expected = "approved" if outcomes["answer"] == "taken" else "cancelled"
        assert request.status == expected
        assert "tool.started" not in kinds(run)


def test_a_workflow_step_cannot_wait_and_says_so(alice, no_queue):
    from workflows.models import Workflow
    from workflows.services import workflow_start

    agent = alice.agents.get()
    agent.tools, agent.approve_tools = ["calculator"], ["calculator"]
    agent.save()
    definition = {"steps": [{"id": "ask", "type": "agent", "agent": agent.pk, "prompt": CALC}]}
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    run = workflow_start(user=alice, workflow=workflow, inputs={})
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    done = next(data for _, kind, data in logged(run) if kind == "tool.done")
    assert "a workflow step cannot wait" in done["error"]
