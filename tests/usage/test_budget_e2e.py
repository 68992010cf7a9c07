"""A run that crosses its owner's daily token budget mid-way, in a real worker process: it
finishes the model turn it is in, keeps that turn's reply, and ends failed before going on."""

import datetime as dt

import httpx
import pytest
from django.utils import timezone

from runs.models import Run
from usage.models import Budget, DailyUsage

from conftest import new_thread, start, wait_for_status
from sse import follow

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def test_a_run_that_crosses_the_budget_ends_failed_after_its_turn(live, live_api, alice):
    # the first turn (the calculator call) uses 9 input tokens (5 of instructions, 4 of the
    # message) and 4 output tokens (its arguments' words): 13, over the 10 allowed
    Budget.objects.create(user=alice, daily_tokens=10)
    thread = new_thread(alice)
    run_id = start(live, live_api, thread, "calculate 2 * 3")
    events = follow(live.base_url, run_id, live_api)
    run = wait_for_status(run_id, Run.Status.FAILED)
    resets = f"{timezone.now().date() + dt.timedelta(days=1)}T00:00:00Z"
    assert run.error == f"the daily token budget of 10 tokens is used up; it resets at {resets}"
    assert (events[-1].type, events[-1].json["status"]) == ("run.status", "failed")
    assert [e.json for e in events if e.type == "usage"] == [
        {"run": run_id, "input_tokens": 9, "output_tokens": 4}
    ]
    assert not [e for e in events if e.type == "tool.started"]  # its calls were not made
    # the turn's reply is kept: the call the model asked for, unanswered
    messages = list(thread.messages.order_by("position").values_list("role", "tool_calls"))
    assert [role for role, _ in messages] == ["user", "assistant"]
    assert messages[1][1][0]["name"] == "calculator"
    assert (run.input_tokens, run.output_tokens) == (9, 4)
    row = DailyUsage.objects.get(owner=alice)
    assert (row.runs, row.input_tokens, row.output_tokens) == (1, 9, 4)

    r = httpx.post(f"{live.base_url}/api/threads/{thread.pk}/runs/", json={"message": "Hi"},
                   headers=live_api)  # fmt: skip
    assert r.status_code == 429 and r.json()["code"] == "budget_exceeded"
    assert r.json()["resets"] == resets and int(r.headers["Retry-After"]) > 0
