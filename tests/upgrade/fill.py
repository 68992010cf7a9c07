"""Fills a database at an older commit's schema through that commit's own models, and writes
what it made as JSON (argv[1]). tests/test_upgrade.py runs it with the old code first on
sys.path, so it may use only what that commit has: today's layout (agents, workflows,
scheduling, DRF's authtoken). When UPGRADE_FROM moves to a commit with another layout, this
file moves with it."""

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402  (after setup)
from rest_framework.authtoken.models import Token  # noqa: E402

from agents.models import Agent, Message, Run, Thread  # noqa: E402
from scheduling.models import Fire, Schedule  # noqa: E402
from workflows.models import StepRun, Workflow  # noqa: E402

User = get_user_model()
T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)

DEFINITION = {
    "inputs": [
        {"name": "a", "type": "number", "required": True, "description": "first number"},
        {"name": "topic", "type": "string", "default": "numbers"},
    ],
    "steps": [
        {"id": "sum", "type": "tool", "tool": "calculator",
         "arguments": {"expression": "{{ inputs.a }} + 1"}},
        {"id": "big", "type": "condition", "when": {"gt": ["{{ steps.sum.output }}", 10]},
         "guards": ["explain"]},
        {"id": "explain", "type": "agent",
         "prompt": "Explain {{ steps.sum.output }} in terms of {{ inputs.topic }}"},
        {"id": "done", "type": "agent", "prompt": "Say done"},
    ],
}  # fmt: skip


def at(minutes):
    return T0 + timedelta(minutes=minutes)


def run(thread, minutes, **fields):
    """A run that started `minutes` after T0 and took a minute unless it is still queued."""
    fields.setdefault("status", Run.Status.COMPLETED)
    queued = fields["status"] == Run.Status.QUEUED
    fields.setdefault("agent", thread.agent)
    fields.setdefault("attempt", 0 if queued else 1)
    fields.setdefault("started", None if queued else at(minutes))
    fields.setdefault("finished", None if queued else at(minutes + 1))
    r = Run.objects.create(owner=thread.owner, thread=thread, **fields)
    Run.objects.filter(pk=r.pk).update(created=at(minutes))  # auto_now_add: set it after
    return r


def turn(thread, r, prompt, reply, calls=()):
    """A user message, the tool calls and their results (name, arguments, result, is_error),
    then the reply, as the agent loop saves them."""
    thread.append_message(run=r, role=Message.Role.USER, content=prompt)
    if calls:
        ids = [f"call_{uuid.uuid4().hex[:8]}" for _ in calls]
        thread.append_message(
            run=r,
            role=Message.Role.ASSISTANT,
            tool_calls=[
                {"id": i, "name": name, "arguments": args}
                for i, (name, args, _, _) in zip(ids, calls, strict=True)
            ],
        )
        for i, (name, _, result, is_error) in zip(ids, calls, strict=True):
            thread.append_message(
                run=r,
                role=Message.Role.TOOL,
                content=result,
                tool_call_id=i,
                name=name,
                is_error=is_error,
            )
    if reply is not None:
        thread.append_message(run=r, role=Message.Role.ASSISTANT, content=reply)


def fill():
    alice = User.objects.create_user("alice", "alice@example.com", "alice-password")
    bob = User.objects.create_user("bob", "bob@example.com", "bob-password")
    User.objects.create_superuser("demo", "demo@example.com", "demo")
    token = Token.objects.create(user=alice)

    helper = Agent.objects.create(
        owner=alice,
        name="Helper",
        instructions="Answer briefly.",
        tools=["calculator", "current_time"],
        config={"demo": {"words": 12, "delay_ms": 0}},
    )
    Agent.objects.create(owner=alice, name="Poet", model="gpt-4o-mini", config={"x": [1, 2]})
    bobs = Agent.objects.create(owner=bob, name="Helper")  # the same name, another owner

    sums = Thread.objects.create(owner=alice, agent=helper, title="Arithmetic")
    done = run(sums, 0, input_tokens=120, output_tokens=34)
    turn(sums, done, "Please calculate 2 * (3 + 4)", "2 * (3 + 4) is **14**.",
         calls=[("calculator", {"expression": "2 * (3 + 4)"}, "14", False),
                ("current_time", {}, "tool timed out after 8 s", True)])  # fmt: skip
    stopped = run(sums, 5, status=Run.Status.STOPPED, stop_requested=at(5.5), output_tokens=3)
    turn(sums, stopped, "Tell me a long story, grüße 👋", "Once upon a")
    lost = run(
        sums,
        10,
        status=Run.Status.FAILED,
        error="worker lost",
        attempt=2,
        lease_owner="worker-1@host",
        lease_expires=at(10.5),
    )
    turn(sums, lost, "And 6 * 7?", None)

    waiting = Thread.objects.create(owner=alice, agent=helper, title="Queued at the upgrade")
    queued = run(waiting, 20, status=Run.Status.QUEUED, trigger=Run.Trigger.MANUAL)
    turn(waiting, queued, "What time is it?", None)
    untitled = Thread.objects.create(owner=alice, agent=None)  # its agent deleted since
    turn(untitled, run(untitled, 25), "Hello", "Hello! How can I help?")
    bobs_chat = Thread.objects.create(owner=bob, agent=bobs, title="Bob's chat")
    turn(bobs_chat, run(bobs_chat, 30), "Hi", "Hi Bob.")

    workflow = Workflow.objects.create(
        owner=alice,
        name="Sum and explain",
        description="Adds one, explains big sums.",
        definition=DEFINITION,
        version=3,
    )
    wf_thread = Thread.objects.create(owner=alice, agent=helper, title="Sum and explain")
    inputs = {"a": 20, "topic": "numbers"}
    failed = run(
        wf_thread,
        40,
        workflow=workflow,
        definition=DEFINITION,
        inputs=inputs,
        status=Run.Status.FAILED,
        error="step 'explain' failed: the model could not be reached",
    )
    turn(wf_thread, failed, "Explain 21 in terms of numbers", None)
    retry = run(
        wf_thread, 45, workflow=workflow, definition=DEFINITION, inputs=inputs, retry_of=failed
    )
    turn(wf_thread, retry, "Explain 21 in terms of numbers", "21 is three sevens.")
    turn(wf_thread, retry, "Say done", "Done.")
    weekdays = Schedule(
        owner=alice,
        name="Weekday sums",
        target=Schedule.Target.WORKFLOW,
        workflow=workflow,
        inputs={"a": 5},
        cron="30 9 * * 1-5",
        timezone="Europe/Paris",
        starts_at=at(-60),
    )
    weekdays.save()  # and its PeriodicTask and CrontabSchedule, in the same transaction
    fired = Thread.objects.create(owner=alice, agent=helper, title="Weekday sums")
    scheduled = run(
        fired,
        60,
        workflow=workflow,
        definition=DEFINITION,
        inputs={"a": 5, "topic": "numbers"},
        trigger=Run.Trigger.SCHEDULE,
    )
    turn(fired, scheduled, "Say done", "Done.")
    for r, steps in (
        (
            failed,
            [
                ("sum", "completed", 21, "", False),
                ("big", "completed", True, "", False),
                ("explain", "failed", None, "the model could not be reached", False),
            ],
        ),
        (
            retry,
            [
                ("sum", "completed", 21, "", True),
                ("big", "completed", True, "", True),
                ("explain", "completed", "21 is three sevens.", "", False),
                ("done", "completed", "Done.", "", False),
            ],
        ),
        (
            scheduled,
            [
                ("sum", "completed", 6, "", False),
                ("big", "completed", False, "", False),
                ("explain", "skipped", None, "", False),
                ("done", "completed", "Done.", "", False),
            ],
        ),
    ):
        for index, (step, status, output, error, reused) in enumerate(steps):
            StepRun.objects.create(
                run=r,
                step=step,
                index=index,
                status=status,
                output=output,
                error=error,
                reused=reused,
                started=r.started,
                finished=r.finished,
            )

    Fire.objects.create(schedule=weekdays, slot=at(60), outcome=Fire.Outcome.STARTED, run=scheduled)
    Fire.objects.create(
        schedule=weekdays,
        slot=at(60 * 24),
        outcome=Fire.Outcome.SKIPPED,
        reason="the previous run is still active",
    )
    Fire.objects.create(
        schedule=weekdays,
        slot=at(60 * 25),
        manual=True,
        outcome=Fire.Outcome.FAILED,
        reason="queue_unavailable",
    )
    Schedule(
        owner=alice,
        name="Morning",
        target=Schedule.Target.AGENT,
        agent=helper,
        prompt="Good morning",
        thread=sums,
        cron="0 8 * * *",
        enabled=False,
        overlap=Schedule.Overlap.STOP_PREVIOUS,
    ).save()
    return {"token": token.key}


def fields(obj, *names):
    """`names` of obj as the API spells them: a foreign key by its id."""
    return {
        name: getattr(obj, f"{name}_id" if f"{name}_id" in obj.__dict__ else name) for name in names
    }


# What the dump holds of each model, named as the API names them.
MESSAGE = ["id", "thread", "run", "role", "content", "tool_calls", "tool_call_id", "name",
           "is_error", "position"]  # fmt: skip
RUN = ["id", "owner", "thread", "agent", "workflow", "retry_of", "status", "trigger", "error",
       "attempt", "stop_requested", "input_tokens", "output_tokens", "created", "started",
       "finished", "definition", "inputs"]  # fmt: skip
SCHEDULE = ["id", "owner", "name", "target", "workflow", "inputs", "agent", "prompt", "thread",
            "cron", "timezone", "enabled", "overlap", "starts_at", "ends_at"]  # fmt: skip
CRONTAB = ["minute", "hour", "day_of_week", "day_of_month", "month_of_year"]


def dump(extra):
    users = User.objects.all()
    agents = Agent.objects.all()
    return {
        **extra,
        "users": [fields(u, "id", "username", "email", "is_superuser") for u in users],
        "agents": [
            fields(a, "id", "owner", "name", "instructions", "model", "tools", "config")
            for a in agents
        ],
        "threads": [fields(t, "id", "owner", "agent", "title") for t in Thread.objects.all()],
        "messages": [fields(m, *MESSAGE) for m in Message.objects.order_by("id")],
        "runs": [fields(r, *RUN) for r in Run.objects.order_by("created")],
        "workflows": [
            fields(w, "id", "owner", "name", "description", "definition", "version")
            for w in Workflow.objects.all()
        ],
        "steps": [
            fields(s, "run", "step", "index", "status", "output", "error", "reused")
            for s in StepRun.objects.all()
        ],
        "schedules": [
            {
                **fields(s, *SCHEDULE),
                "periodic_task": {
                    **fields(s.periodic_task, "name", "task", "args", "enabled"),
                    "crontab": fields(s.periodic_task.crontab, *CRONTAB),
                },
            }
            for s in Schedule.objects.select_related("periodic_task__crontab")
        ],
        "fires": [
            fields(f, "id", "schedule", "slot", "manual", "outcome", "reason", "run")
            for f in Fire.objects.all()
        ],
    }


def as_json(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


if __name__ == "__main__":
    made = dump(fill())
    with open(sys.argv[1], "w") as out:
        json.dump(made, out, default=as_json, indent=1)
