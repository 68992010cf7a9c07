"""Counting what runs use, and enforcing the daily token budgets: receivers of runs.signals
(connected in apps.py), and the report GET /api/usage/ answers.

Days are UTC days. A run's tokens are saved per attempt (when it waits, is handed back or
ends), and counted on the day they are saved; a running run's budget check adds the tokens
of its attempt not yet saved."""

import datetime as dt
import math

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from agents.models import Agent, RunAgent
from runs.errors import ServiceError

from .models import Budget, DailyUsage


class BudgetExceeded(ServiceError):
    status = 429
    code = "budget_exceeded"

    def __init__(self, message, *, resets, **extra):
        super().__init__(message, resets=iso(resets), **extra)
        self.resets = resets

    def headers(self):
        seconds = math.ceil((self.resets - now()).total_seconds())
        return {"Retry-After": str(max(1, seconds))}


def now():
    return timezone.now()


def today():
    return now().astimezone(dt.UTC).date()


def next_midnight():
    """When today's budget resets: the next UTC midnight."""
    return dt.datetime.combine(today() + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def used_today(user_id):
    return DailyUsage.objects.filter(owner_id=user_id, day=today()).tokens()


def _add(run, **increments):
    """Add to the ledger row of the run's owner, today and the run's agent, in the caller's
    transaction (the one that counts the run, or adds its tokens)."""
    agent_id, name = RunAgent.objects.filter(run_id=run.pk).values_list(
        "agent_id", "agent__name"
    ).first() or (None, None)
    key = {"owner_id": run.owner_id, "day": today(), "agent_key": agent_id or 0}
    changes = {field: F(field) + value for field, value in increments.items()}
    if name:
        changes["agent_name"] = name
    if DailyUsage.objects.filter(**key).update(**changes):
        return
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction survives a race
            DailyUsage.objects.create(**key, agent_name=name or "", **increments)
    except IntegrityError:  # another transaction made the row first (it waited for its commit)
        DailyUsage.objects.filter(**key).update(**changes)


def usage_count_run(sender, *, run, **kwargs):
    """runs.signals.run_started: one more run today."""
    _add(run, runs=1)


def usage_add_tokens(sender, *, run, input_tokens, output_tokens, **kwargs):
    """runs.signals.run_usage: an attempt's tokens, added to the run in this transaction."""
    _add(run, input_tokens=input_tokens, output_tokens=output_tokens)


def budget_check_start(sender, *, user, **kwargs):
    """runs.signals.run_starting: refuse a start once today's budget is used up. Every start
    goes through it: the API's, a page's, a schedule's fire, a follow-up's, a retry's."""
    budget = Budget.of(user.pk)
    if budget is None:
        return
    used = used_today(user.pk)
    if used >= budget:
        resets = next_midnight()
        raise BudgetExceeded(
            f"Your daily token budget of {budget} tokens is used up ({used} used today);"
            f" it resets at {iso(resets)}.",
            budget=budget, used=used, resets=resets,
        )  # fmt: skip


def budget_check_turn(sender, *, run, input_tokens, output_tokens, **kwargs):
    """runs.signals.run_turn_ended: end a run that has used up today's budget (with what its
    attempt used and has not saved yet) before it goes on."""
    budget = Budget.of(run.owner_id)
    if budget is None:
        return
    used = used_today(run.owner_id) + input_tokens + output_tokens
    if used >= budget:
        resets = next_midnight()
        raise BudgetExceeded(
            f"the daily token budget of {budget} tokens is used up; it resets at {iso(resets)}",
            budget=budget, used=used, resets=resets,
        )  # fmt: skip


def _counts(runs=0, input_tokens=0, output_tokens=0):
    return {"runs": runs, "input_tokens": input_tokens, "output_tokens": output_tokens}


def _add_to(entry, row):
    entry["runs"] += row.runs
    entry["input_tokens"] += row.input_tokens
    entry["output_tokens"] += row.output_tokens


def _last_0(agent_key):
    return (agent_key == 0, agent_key)


def usage_report(*, user, first, last):
    """The user's runs and tokens per UTC day from `first` to `last` (dates, inclusive; every
    day of the range, those without runs too), per agent, with totals and the budget."""
    rows = list(DailyUsage.objects.filter(owner=user, day__range=(first, last)))
    # an agent shows its name as it is now, or as it was last used when it was deleted
    names = dict(
        Agent.objects.filter(owner=user, pk__in={r.agent_key for r in rows}).values_list(
            "pk", "name"
        )
    )
    days = {}
    for i in range((last - first).days + 1):
        day = first + dt.timedelta(days=i)
        days[day] = {"day": day, **_counts(), "agents": {}}
    totals = {**_counts(), "agents": {}}
    for row in rows:
        agent = {
            "agent": row.agent_key or None,
            "name": names.get(row.agent_key, row.agent_name),
            **_counts(),
        }
        for entry in (days[row.day], totals):
            _add_to(entry, row)
            _add_to(entry["agents"].setdefault(row.agent_key, dict(agent)), row)
    for entry in (*days.values(), totals):
        # by id, the runs of no agent (a workflow's without one, a deleted agent's) last
        entry["agents"] = [entry["agents"][key] for key in sorted(entry["agents"], key=_last_0)]
    budget = Budget.of(user.pk)
    used = used_today(user.pk)
    return {
        "from": first,
        "to": last,
        "days": list(days.values()),
        "totals": totals,
        "budget": {
            "daily_tokens": budget,
            "used_today": used,
            "remaining": None if budget is None else max(0, budget - used),
            "resets": next_midnight(),
        },
    }
