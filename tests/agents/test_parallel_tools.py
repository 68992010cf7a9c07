"""The demo model's `/tool` lines, and several tool calls of one turn running at once, in a run
this process executes (the test is the worker)."""

import pytest

from agents import runner, services, tools
from agents.llm.demo import DemoModel
from runs import loop
from runs.models import Run
from runs.worker import StopSignal

from conftest import logged, new_thread, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_queue")]


@pytest.fixture
def meeting():
    """Two tools that meet: `first` answers once `second` has ended (its tool.done is in the
    run's log), so one after the other, `first` first, it times out; at once, both answer."""
    watched = {}

    def first():
        wait_for(lambda: any(kind == "tool.done" for _, kind, _ in logged(watched["run"])),
                 timeout=3, message="second to end")  # fmt: skip
        return "met"

    def second():
        return "here"

    empty = {"type": "object", "properties": {}, "additionalProperties": False}
    tools.register("first", "waits for second", empty, timeout=5)(first)
    tools.register("second", "lets first go", empty)(second)
    yield watched
    tools.unregister("first")
    tools.unregister("second")


def test_the_demo_model_calls_exactly_the_tools_its_tool_lines_name():
    message = {"role": "user", "content": '/tool calculator {"expression": "6*7"}\n/tool nope'}
    calls = [
        item for item in DemoModel().stream([message], [], StopSignal()) if hasattr(item, "name")
    ]
    assert [(c.name, c.arguments) for c in calls] == [
        ("calculator", '{"expression": "6*7"}'), ("nope", "{}"),
    ]  # fmt: skip
    assert len({c.id for c in calls}) == 2


def test_calls_of_one_turn_run_at_once_and_answer_in_the_order_asked(alice, meeting):
    thread = new_thread(alice, tools=["first", "second"])
    run = services.agent_start(user=alice, thread=thread, message="/tool first\n/tool second")
    meeting["run"] = run
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    events = [(kind, data.get("name")) for _, kind, data in logged(run) if kind.startswith("tool")]
    # both started before either ended, and the quick one ended first
    assert events[:2] in ([("tool.started", "first"), ("tool.started", "second")],
                          [("tool.started", "second"), ("tool.started", "first")])  # fmt: skip
    assert events[2:] == [("tool.done", "second"), ("tool.done", "first")]
    reply = thread.messages.filter(role="assistant").last().content
    assert reply == "The first tool answered: met The second tool answered: here"
    history = runner.history_messages(thread, alice.agents.get())
    assert [m.get("content") for m in history if m["role"] == "tool"] == ["met", "here"]


def test_a_tool_the_agent_may_not_call_answers_with_an_error_and_the_run_goes_on(alice):
    thread = new_thread(alice, tools=["calculator"])
    message = '/tool current_time\n/tool calculator {"expression": "2+2"}'
    run = services.agent_start(user=alice, thread=thread, message=message)
    loop.execute(run.pk)
    done = [data for _, kind, data in logged(run) if kind == "tool.done"]
    assert {d["name"]: (d["output"], d["error"]) for d in done} == {
        "current_time": (None, "tool 'current_time' is not allowed for this agent"),
        "calculator": ("4", None),
    }
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED


def test_calls_beyond_the_turn_limit_are_answered_with_an_error(alice, settings):
    settings.TOOLS_MAX_CALLS_PER_TURN = 2
    thread = new_thread(alice, tools=["calculator"])
    message = "\n".join(f'/tool calculator {{"expression": "{i}+1"}}' for i in range(3))
    run = services.agent_start(user=alice, thread=thread, message=message)
    loop.execute(run.pk)
    done = [data for _, kind, data in logged(run) if kind == "tool.done"]
    assert sorted((d["output"] or "", d["error"] or "") for d in done) == [
        ("", "too many tool calls in one turn (at most 2)"), ("1", ""), ("2", ""),
    ]  # fmt: skip
    assert all(data["server"] is None for _, kind, data in logged(run) if kind == "tool.done")
