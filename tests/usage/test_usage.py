"""Usage per day and agent (GET /api/usage/), and the daily token budgets: a start over budget
is refused (429 `budget_exceeded`), however it starts; a run that crosses it mid-way ends failed
after the turn it is in. The demo model counts words as tokens: a run of `new_thread(words=40)`
answering "Tell me something" uses 8 input tokens (the Demo agent's 5 words of instructions and
the message's 3) and 40 output tokens."""

import datetime as dt
import importlib

import pytest
from django.apps import apps as django_apps
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from agents import services
from agents.models import Agent, create_thread
from runs import lifecycle
from runs.models import FollowUp, Run
from scheduling.models import Fire, Schedule
from scheduling.services import schedule_fire
from usage import services as usage
from usage.models import Budget, DailyUsage
from workflows.models import Workflow
from workflows.services import workflow_start

from conftest import new_thread, pace, saved, waiting_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

ONE_RUN = 8 + 40  # the tokens of one run of `run_one`


def run_one(user, no_queue, thread=None, message="Tell me something"):
    run = services.agent_start(user=user, thread=thread or new_thread(user), message=message)
    no_queue.run()
    run.refresh_from_db()
    return run


def at(monkeypatch, moment):
    """The usage app's clock at `moment`."""
    monkeypatch.setattr(usage, "now", lambda: moment)


def test_it_reports_runs_and_tokens_per_day_and_agent(alice, bob, alice_api, no_queue, monkeypatch):
    today = timezone.now().date()
    yesterday = today - dt.timedelta(days=1)
    demo = pace(alice, words=40)
    second = Agent.objects.create(owner=alice, name="Second", instructions="Be brief.",
                                  config={"demo": {"words": 7, "delay_ms": 0}})  # fmt: skip
    with monkeypatch.context() as patched:
        patched.setattr(usage, "now", lambda: timezone.now() - dt.timedelta(days=1))
        run_one(alice, no_queue, thread=create_thread(owner=alice, agent=demo))
    run_one(alice, no_queue, thread=create_thread(owner=alice, agent=demo))
    run_one(alice, no_queue, thread=create_thread(owner=alice, agent=second))
    run_one(bob, no_queue)  # not alice's

    r = alice_api.get(f"/api/usage/?from={yesterday}&to={today}")
    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["from"], body["to"]) == (str(yesterday), str(today))
    demo_day = {"agent": demo.pk, "name": "Demo", "runs": 1, "input_tokens": 8,
                "output_tokens": 40}  # fmt: skip
    second_day = {"agent": second.pk, "name": "Second", "runs": 1, "input_tokens": 2 + 3,
                  "output_tokens": 7}  # fmt: skip
    assert body["days"] == [
        {"day": str(yesterday), "runs": 1, "input_tokens": 8, "output_tokens": 40,
         "agents": [demo_day]},
        {"day": str(today), "runs": 2, "input_tokens": 13, "output_tokens": 47,
         "agents": [demo_day, second_day]},
    ]  # fmt: skip
    assert body["totals"] == {
        "runs": 3, "input_tokens": 21, "output_tokens": 87,
        "agents": [{**demo_day, "runs": 2, "input_tokens": 16, "output_tokens": 80}, second_day],
    }  # fmt: skip
    # no budget by default; today's tokens are alice's only
    assert body["budget"]["daily_tokens"] is None
    assert body["budget"]["used_today"] == 13 + 47
    # the same as the runs' own columns
    runs = Run.objects.filter(owner=alice)
    assert sum(r.input_tokens + r.output_tokens for r in runs) == 21 + 87


def test_it_defaults_to_the_last_30_days_and_keeps_what_deleted_things_used(
    alice, alice_api, no_queue
):
    run = run_one(alice, no_queue)
    agent = alice.agents.get()
    agent_id = agent.pk
    run.thread.delete()
    agent.delete()
    body = alice_api.get("/api/usage/").json()
    today = timezone.now().date()
    assert len(body["days"]) == 30
    assert body["days"][-1]["day"] == str(today) == body["to"]
    assert body["days"][0]["day"] == str(today - dt.timedelta(days=29)) == body["from"]
    assert body["days"][0] == {"day": body["from"], "runs": 0, "input_tokens": 0,
                               "output_tokens": 0, "agents": []}  # fmt: skip
    # a deleted thread gives no budget back; a deleted agent keeps its name
    assert body["totals"]["agents"] == [
        {"agent": agent_id, "name": "Demo", "runs": 1, "input_tokens": 8, "output_tokens": 40},
    ]  # fmt: skip


def test_another_users_usage_is_not_shown(alice, bob_api, no_queue):
    run_one(alice, no_queue)
    body = bob_api.get("/api/usage/").json()
    assert body["totals"] == {"runs": 0, "input_tokens": 0, "output_tokens": 0, "agents": []}
    assert body["budget"]["used_today"] == 0


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("from=2026-13-01", "from", "wrong format"),
        ("to=yesterday", "to", "wrong format"),
        ("from=2026-02-30", "from", "wrong format"),
        ("to=%00", "to", "wrong format"),
        ("to=2026-12-01T10:00:00Z", "to", "wrong format"),
        ("from=2026-12-02&to=2026-12-01", "from", "on or before `to`"),
        ("from=2025-01-01&to=2026-01-02", "from", "at most 366 days"),
        ("from=0001-01-01&to=9999-12-31", "from", "at most 366 days"),
    ],
)
def test_it_refuses_bad_dates_naming_the_field(alice_api, query, field, reason):
    r = alice_api.get(f"/api/usage/?{query}")
    assert r.status_code == 400, r.content
    assert reason in str(r.json()[field])


def test_it_takes_a_range_of_366_days_and_the_first_days_there_are(alice_api):
    assert alice_api.get("/api/usage/?from=2024-01-01&to=2024-12-31").status_code == 200
    body = alice_api.get("/api/usage/?to=0001-01-05").json()
    assert (body["from"], len(body["days"])) == ("0001-01-01", 5)


def test_it_needs_a_user(client):
    assert client.get("/api/usage/").status_code in (401, 403)


def test_a_start_over_the_budget_is_refused_until_the_next_utc_midnight(
    alice, alice_api, no_queue, settings
):
    settings.RUN_DAILY_TOKEN_BUDGET = ONE_RUN + 1
    run_one(alice, no_queue)
    thread = new_thread(alice)
    assert alice_api.post(f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}).status_code == 202
    no_queue.run()  # over the budget now: 8 + 40 + 6 + 40

    thread = new_thread(alice)
    before = saved()
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", {"message": "Hi"})
    assert r.status_code == 429, r.content
    body = r.json()
    tomorrow = timezone.now().date() + dt.timedelta(days=1)
    assert body["code"] == "budget_exceeded"
    assert body["resets"] == f"{tomorrow}T00:00:00Z"
    assert (body["budget"], body["used"]) == (ONE_RUN + 1, ONE_RUN + 46)
    assert f"daily token budget of {ONE_RUN + 1} tokens is used up" in body["detail"]
    midnight = dt.datetime.combine(tomorrow, dt.time.min, tzinfo=dt.UTC)
    assert abs(int(r["Retry-After"]) - (midnight - timezone.now()).total_seconds()) < 5
    assert saved() == before
    assert alice_api.get("/api/usage/").json()["budget"] == {
        "daily_tokens": ONE_RUN + 1, "used_today": ONE_RUN + 46, "remaining": 0,
        "resets": f"{tomorrow}T00:00:00Z",
    }  # fmt: skip


def test_the_budget_resets_at_utc_midnight(alice, no_queue, settings, monkeypatch):
    settings.RUN_DAILY_TOKEN_BUDGET = ONE_RUN
    run_one(alice, no_queue)
    with pytest.raises(usage.BudgetExceeded):
        run_one(alice, no_queue)
    at(monkeypatch, timezone.now() + dt.timedelta(days=1))
    assert run_one(alice, no_queue).status == Run.Status.COMPLETED


def test_a_users_own_budget_beats_the_default(alice, bob, alice_api, bob_api, no_queue, settings):
    settings.RUN_DAILY_TOKEN_BUDGET = ONE_RUN
    for user in (alice, bob):
        run_one(user, no_queue)

    def start(api, user):
        return api.post(f"/api/threads/{new_thread(user).pk}/runs/", {"message": "Hi"})

    assert start(bob_api, bob).status_code == 429  # the default
    assert start(alice_api, alice).status_code == 429
    budget = Budget.objects.create(user=alice, daily_tokens=0)  # none for alice
    assert start(alice_api, alice).status_code == 202
    no_queue.run()
    budget.daily_tokens = 10_000
    budget.save()
    assert start(alice_api, alice).status_code == 202
    no_queue.run()
    budget.daily_tokens = None  # the default again
    budget.save()
    assert start(alice_api, alice).status_code == 429
    settings.RUN_DAILY_TOKEN_BUDGET = 0  # no default budget
    assert start(bob_api, bob).status_code == 202
    Budget.objects.create(user=bob, daily_tokens=ONE_RUN)  # but bob's own
    assert start(bob_api, bob).status_code == 429


def test_every_way_a_run_starts_is_refused_over_the_budget(alice, alice_api, no_queue, settings):
    workflow = Workflow.objects.create(owner=alice, name="One", definition={
        "inputs": [], "steps": [{"id": "go", "type": "tool", "tool": "calculator",
                                 "arguments": {"expression": "1 / 0"}}],
    })  # fmt: skip
    failed = workflow_start(user=alice, workflow=workflow, inputs={})
    no_queue.run()
    assert Run.objects.get(pk=failed.pk).status == Run.Status.FAILED
    busy = new_thread(alice, words=5)
    services.agent_start(user=alice, thread=busy, message="one")
    follow_up = services.agent_start(user=alice, thread=busy, message="two", if_busy="enqueue")
    Budget.objects.create(user=alice, daily_tokens=1)
    no_queue.run()  # "one" uses the budget up; its end starts "two"'s run: refused

    follow_up.refresh_from_db()
    assert follow_up.status == FollowUp.Status.FAILED
    assert "daily token budget of 1 tokens is used up" in follow_up.error
    # a workflow run, and a retry
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": {}})
    assert (r.status_code, r.json()["code"]) == (429, "budget_exceeded")
    r = alice_api.post(f"/api/runs/{failed.pk}/retry/")
    assert (r.status_code, r.json()["code"]) == (429, "budget_exceeded")
    with pytest.raises(usage.BudgetExceeded):
        lifecycle.run_retry(run=Run.objects.get(pk=failed.pk))
    # a schedule's fire is recorded as refused, as the scheduler records refusals
    schedule = Schedule.objects.create(
        owner=alice, name="Hourly", target="agent", agent=alice.agents.get(), prompt="Hi",
        cron="0 * * * *",
    )  # fmt: skip
    fire = schedule_fire(schedule_id=schedule.pk, manual=True)
    assert fire.outcome == Fire.Outcome.FAILED and fire.run is None
    assert "daily token budget of 1 tokens is used up" in fire.reason
    assert Run.objects.filter(owner=alice).count() == 2


def test_it_counts_a_runs_tokens_once_across_its_attempts(alice, alice_api, no_queue):
    run = waiting_run(alice, no_queue)  # its first attempt asked to approve a calculator call
    assert run.status == Run.Status.WAITING
    first = run.input_tokens + run.output_tokens
    assert first > 0
    assert DailyUsage.objects.get(owner=alice).input_tokens == run.input_tokens
    request = run.requests.get()
    r = alice_api.post(f"/api/runs/{run.pk}/respond/", {"request": request.pk, "approve": True})
    assert r.status_code == 202, r.content
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and run.attempt == 2
    assert run.input_tokens + run.output_tokens > first
    row = DailyUsage.objects.get(owner=alice)
    assert (row.runs, row.input_tokens, row.output_tokens) == (
        1, run.input_tokens, run.output_tokens
    )  # fmt: skip


def test_a_workflow_that_uses_up_the_budget_fails_before_its_next_agent_step(alice, no_queue):
    workflow = Workflow.objects.create(owner=alice, name="Two", definition={
        "inputs": [],
        "steps": [{"id": "one", "type": "agent", "prompt": "Say one"},
                  {"id": "two", "type": "agent", "prompt": "Say two"}],
    })  # fmt: skip
    Budget.objects.create(user=alice, daily_tokens=10)
    run = workflow_start(user=alice, workflow=workflow, inputs={})
    no_queue.run()
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error.startswith(
        "step 'two' failed: the daily token budget of 10 tokens is used up; it resets at "
    )
    replies = run.messages.filter(role="assistant")
    assert replies.count() == 1 and replies.get().content  # step one's reply, kept
    assert DailyUsage.objects.get(owner=alice).input_tokens == run.input_tokens > 0


def test_an_administrator_sets_a_users_budget_on_the_users_admin_page(alice, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="root-password")
    web = Client()
    web.force_login(admin)
    page = web.get(f"/admin/auth/user/{alice.pk}/change/")
    assert page.status_code == 200
    assert b"daily token budget" in page.content.lower()
    form = {field: value for field, value in page.context["adminform"].form.initial.items()}
    r = web.post(f"/admin/auth/user/{alice.pk}/change/", {
        "username": "alice", "password": form["password"], "is_active": "on",
        "date_joined_0": "2026-12-01", "date_joined_1": "10:00:00",
        "token_budget-TOTAL_FORMS": "1", "token_budget-INITIAL_FORMS": "0",
        "token_budget-0-daily_tokens": "5000",
    })  # fmt: skip
    assert r.status_code == 302, r.content
    assert Budget.of(alice.pk) == 5000
    assert web.get("/admin/usage/dailyusage/").status_code == 200


def test_the_schema_documents_the_usage_and_the_budgets_refusal():
    paths = APIClient().get("/api/schema/?format=json").json()["paths"]
    assert set(paths["/api/usage/"]["get"]["responses"]) >= {"200", "400", "401"}
    refused = paths["/api/threads/{id}/runs/"]["post"]["responses"]["429"]
    assert "`budget_exceeded`" in refused["description"]
    assert "Retry-After" in refused["headers"]


def test_it_counts_the_tokens_of_an_attempt_handed_back_at_a_shutdown_once(alice, no_queue):
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Tell me something")
    sent = no_queue.sent
    no_queue.sent = []  # the start's task: the worker below claims the run instead
    claimed = lifecycle.run_claim(run_id=run.pk, worker="worker-1")
    assert lifecycle.run_hand_back(run=claimed, usage=(3, 4))  # its worker shut down
    no_queue.sent = sent + no_queue.sent
    no_queue.run()  # the next worker finishes it; the other message finds it ended
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and run.attempt == 2
    assert (run.input_tokens, run.output_tokens) == (3 + 8, 4 + 40)
    row = DailyUsage.objects.get(owner=alice)
    assert (row.runs, row.input_tokens, row.output_tokens) == (1, 11, 44)


def test_the_migration_counts_the_runs_made_before_the_ledger(alice, bob, no_queue):
    backfill = importlib.import_module("usage.migrations.0002_backfill").backfill
    run_one(alice, no_queue)
    run_one(alice, no_queue)
    run_one(bob, no_queue)
    kept = list(DailyUsage.objects.order_by("owner", "day", "agent_key").values())
    DailyUsage.objects.all().delete()
    backfill(django_apps, None)
    rows = list(DailyUsage.objects.order_by("owner", "day", "agent_key").values())
    assert [{**r, "id": 0} for r in rows] == [{**r, "id": 0} for r in kept]
    assert [r["runs"] for r in rows] == [2, 1]
