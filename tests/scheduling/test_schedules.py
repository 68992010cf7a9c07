"""Schedules: kept in sync with django-celery-beat, fired once per slot, overlap policies,
DST, and the API's validation."""

import logging
import threading
from datetime import UTC, datetime

import pytest
from celery.utils.imports import symbol_by_name
from django.conf import settings
from django.db import connection
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from agents.models import create_thread
from config.celery import app as celery_app
from runs import lifecycle
from runs.models import Run, Thread
from scheduling.models import Fire, Schedule
from scheduling.services import schedule_fire
from workflows.models import Workflow

from conftest import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]  # runs stay queued


def agent_schedule(user, **fields):
    return Schedule.objects.create(
        owner=user,
        name=fields.pop("name", "Morning"),
        target=Schedule.Target.AGENT,
        agent=user.agents.get(),
        prompt="Good morning",
        cron=fields.pop("cron", "0 9 * * 1-5"),
        timezone=fields.pop("timezone", "Europe/Berlin"),
        **fields,
    )


def at(*args):
    return datetime(*args, tzinfo=UTC)


def test_it_keeps_one_periodic_task_in_sync(alice):
    schedule = agent_schedule(alice)
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (task.task, task.args, task.enabled) == (
        "scheduling.tasks.fire_schedule_task",
        f"[{schedule.pk}]",
        True,
    )
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("0", "9", "1,2,3,4,5")
    assert str(crontab.timezone) == "Europe/Berlin"
    schedule.cron = "30 2 * * *"
    schedule.timezone = "America/New_York"
    schedule.save()
    crontab.refresh_from_db()
    assert (crontab.minute, crontab.hour, str(crontab.timezone)) == ("30", "2", "America/New_York")
    schedule.enabled = False
    schedule.save()
    assert not PeriodicTask.objects.get(pk=task.pk).enabled
    assert PeriodicTask.objects.count() == CrontabSchedule.objects.count() == 1
    schedule.delete()
    assert not PeriodicTask.objects.exists()
    assert not CrontabSchedule.objects.exists()


def beat_scheduler():
    """The scheduler beat runs (settings.CELERY_BEAT_SCHEDULER), without its start-up reads."""
    scheduler = symbol_by_name(settings.CELERY_BEAT_SCHEDULER)(app=celery_app, lazy=True)
    scheduler._finalize.cancel()  # it would sync at exit, long after the test's database
    return scheduler


# beat closes its connection between steps: these need the transactions committed
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("deleted_in", ["api", "admin"])
def test_beat_writing_back_a_task_deleted_meanwhile_does_not_bring_it_back(
    alice, caplog, deleted_in
):
    schedule = agent_schedule(alice, cron="* * * * *")
    scheduler = beat_scheduler()
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    entry = scheduler.reserve(scheduler.Entry(task, app=celery_app))  # it fired: to be saved
    scheduler._schedule = {entry.name: entry}
    deleted = []

    def delete_it_first(execute, sql, params, many, context):
        # deleted just as beat writes the task back: the schedule through the API (its task
        # and crontab go with it), or only the periodic task in django-celery-beat's admin
        if not deleted and sql.startswith('UPDATE "django_celery_beat_periodictask" '):
            deleted.append(sql)
            if deleted_in == "api":
                Schedule.objects.filter(pk=schedule.pk).delete()
            else:
                PeriodicTask.objects.filter(pk=task.pk).delete()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(delete_it_first):
        scheduler.sync()
    assert deleted
    # not inserted again: pointing at a deleted crontab (an IntegrityError that ends the sync),
    # or firing a task that was deleted
    assert not PeriodicTask.objects.filter(name=task.name).exists()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.django_db(transaction=True)
def test_a_crontab_beat_shares_with_a_schedule_outlives_its_edit_and_delete(alice):
    schedule = agent_schedule(alice, cron="0 4 * * *", timezone="UTC")
    crontab_id = PeriodicTask.objects.get(pk=schedule.periodic_task_id).crontab_id
    # beat's own entry (celery.backend_cleanup, 04:00 UTC) finds its crontab by value: ours
    beat_scheduler().install_default_entries({})
    cleanup = PeriodicTask.objects.get(name="celery.backend_cleanup")
    assert cleanup.crontab_id == crontab_id
    schedule.cron = "30 5 * * *"
    schedule.save()
    cleanup.refresh_from_db()
    assert (cleanup.crontab.minute, cleanup.crontab.hour) == ("0", "4")
    schedule.delete()
    assert PeriodicTask.objects.get(name="celery.backend_cleanup").crontab_id == crontab_id


def test_it_spells_out_cron_forms_celery_refuses(alice):
    schedule = agent_schedule(alice, cron="5/20 9 * * 5-7", timezone="UTC")
    crontab = PeriodicTask.objects.get(pk=schedule.periodic_task_id).crontab
    assert (crontab.minute, crontab.day_of_week) == ("5,25,45", "0,5,6")
    crontab.schedule.remaining_estimate(at(2026, 11, 25, 12, 0))  # Celery takes it


def test_it_fires_a_slot_once_however_often_it_is_sent(alice):
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC")
    first = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0, 1))
    again = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0, 2))  # a 2nd beat
    assert first.outcome == Fire.Outcome.STARTED
    assert first.slot == at(2026, 11, 25, 12, 0)
    assert again is None
    assert Run.objects.filter(trigger="schedule").count() == 1
    assert first.run.thread.messages.get().content == "Good morning"


def test_it_skips_a_fire_while_the_previous_run_is_active(alice):
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC")
    first = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    second = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 1))
    assert second.outcome == Fire.Outcome.SKIPPED
    assert f"run {first.run.pk} is still queued" in second.reason
    assert Run.objects.count() == 1


def test_it_starts_anyway_when_overlap_is_allowed(alice):
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC", overlap="allow")
    fires = [schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, m)) for m in (0, 1)]
    assert [f.outcome for f in fires] == ["started", "started"]
    assert Run.objects.active().count() == 2


def test_it_stops_the_previous_run_when_asked(alice):
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC", overlap="stop_previous")
    first = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    second = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 1))
    first.run.refresh_from_db()
    assert first.run.status == Run.Status.STOPPED
    assert (second.outcome, second.run.status) == ("started", "queued")


def test_it_fires_a_daily_0230_once_across_berlins_fall_back(alice):
    schedule = agent_schedule(alice, cron="30 2 * * *", timezone="Europe/Berlin", overlap="allow")
    # 2026-10-25: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET)
    first = schedule_fire(schedule_id=schedule.pk, now=at(2026, 10, 25, 0, 30))
    second = schedule_fire(schedule_id=schedule.pk, now=at(2026, 10, 25, 1, 30))
    assert first.slot == at(2026, 10, 25, 0, 30)
    assert second is None
    assert Fire.objects.count() == 1


@pytest.mark.parametrize(
    ("zone", "beat_at", "slot"),
    [
        # 02:30 does not exist on the spring-forward day: it fires once, at 03:30 local
        ("America/New_York", at(2026, 3, 8, 7, 30), at(2026, 3, 8, 7, 30)),
        ("Europe/Berlin", at(2026, 3, 29, 1, 30), at(2026, 3, 29, 1, 30)),
        # a beat that fires at 03:00 local instead stands for the same slot
        ("Europe/Berlin", at(2026, 3, 29, 1, 0), at(2026, 3, 29, 1, 30)),
        # fall back in New York leaves 02:30 alone: once, at 07:30 UTC
        ("America/New_York", at(2026, 11, 1, 7, 30), at(2026, 11, 1, 7, 30)),
    ],
)
def test_it_fires_a_daily_0230_once_on_the_days_clocks_change(alice, zone, beat_at, slot):
    schedule = agent_schedule(alice, cron="30 2 * * *", timezone=zone, overlap="allow")
    fire = schedule_fire(schedule_id=schedule.pk, now=beat_at)
    assert fire.slot == slot
    assert schedule_fire(schedule_id=schedule.pk, now=slot) is None


def test_it_runs_a_workflow_schedule_with_its_inputs(alice):
    definition = {
        "inputs": [{"name": "a", "type": "number", "required": True}],
        "steps": [{"id": "s", "type": "agent", "prompt": "{{ inputs.a }}"}],
    }
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    schedule = Schedule.objects.create(
        owner=alice, name="Nightly", target="workflow", workflow=workflow, inputs={"a": 3},
        cron="0 0 * * *", timezone="UTC",
    )  # fmt: skip
    fire = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 0, 0))
    assert (fire.run.workflow_run.workflow, fire.run.workflow_run.inputs, fire.run.trigger) == (
        workflow,
        {"a": 3},
        "schedule",
    )


def test_it_disables_a_schedule_whose_target_is_gone(alice):
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC")
    alice.agents.all().delete()
    fire = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    schedule.refresh_from_db()
    assert fire.outcome == Fire.Outcome.FAILED
    assert "its agent was deleted" in fire.reason
    assert (schedule.enabled, schedule.disabled_reason) == (False, "its agent was deleted")
    assert not PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled


def test_it_does_not_fire_outside_its_window_or_while_paused(alice):
    schedule = agent_schedule(
        alice, cron="* * * * *", timezone="UTC", starts_at=at(2026, 12, 1, 0, 0)
    )
    assert schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0)) is None
    schedule.starts_at = None
    schedule.enabled = False
    schedule.save()
    assert schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0)) is None
    assert not Fire.objects.exists()


def test_it_records_a_fire_that_could_not_start_and_why(alice, settings):
    settings.RUN_MAX_ACTIVE_PER_USER = 0
    schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC")
    fire = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    assert fire.outcome == Fire.Outcome.FAILED
    assert "active runs, the most allowed" in fire.reason


@pytest.mark.parametrize("target", ["agent", "workflow"])
def test_a_fire_refused_over_the_active_run_cap_leaves_no_thread(alice, settings, target):
    settings.RUN_MAX_ACTIVE_PER_USER = 0
    if target == "agent":
        schedule = agent_schedule(alice, cron="* * * * *", timezone="UTC")
    else:
        definition = {"steps": [{"id": "s", "type": "agent", "prompt": "Hi"}]}
        workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
        schedule = Schedule.objects.create(
            owner=alice, name="W", target="workflow", workflow=workflow, cron="* * * * *"
        )
    fire = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    assert fire.outcome == Fire.Outcome.FAILED
    assert not Thread.objects.exists()


# the API


def test_it_manages_schedules_through_the_api(alice, alice_api):
    r = alice_api.post(
        "/api/schedules/",
        {"name": "Daily", "target": "agent", "agent": alice.agents.get().pk, "prompt": "Hi",
         "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
        format="json",
    )  # fmt: skip
    assert r.status_code == 201, r.data
    schedule_id = r.data["id"]
    assert r.data["description"]
    assert len(r.data["next_fires"]) == 3
    assert alice_api.post(f"/api/schedules/{schedule_id}/pause/").data["enabled"] is False
    assert alice_api.post(f"/api/schedules/{schedule_id}/resume/").data["enabled"] is True
    fire = alice_api.post(f"/api/schedules/{schedule_id}/trigger/")
    assert fire.status_code == 202
    assert (fire.data["manual"], fire.data["outcome"]) == (True, "started")
    fires = alice_api.get(f"/api/schedules/{schedule_id}/fires/").data["results"]
    assert [f["id"] for f in fires] == [fire.data["id"]]
    assert alice_api.delete(f"/api/schedules/{schedule_id}/").status_code == 204
    assert not PeriodicTask.objects.exists()


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"cron": "61 * * * *"}, "cron", "minute: 61 is out of range 0-59"),
        ({"cron": "* * *"}, "cron", "expected 5 fields"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
        ({"agent": None}, "agent", "needs an agent"),
        ({"prompt": ""}, "prompt", "needs a prompt"),
        ({"overlap": "queue"}, "overlap", "not a valid choice"),
    ],
)
def test_it_refuses_a_bad_schedule_naming_the_field(alice, alice_api, change, field, reason):
    body = {"name": "Daily", "target": "agent", "agent": alice.agents.get().pk, "prompt": "Hi",
            "cron": "30 2 * * *", "timezone": "UTC", **change}  # fmt: skip
    r = alice_api.post("/api/schedules/", body, format="json")
    assert r.status_code == 400
    assert reason in str(r.data[field]), r.data
    assert not Schedule.objects.exists()


def test_it_refuses_a_prompt_over_the_message_limit(alice, alice_api, settings):
    limit = settings.RUN_MESSAGE_MAX_BYTES
    body = {"name": "Daily", "target": "agent", "agent": alice.agents.get().pk,
            "prompt": "x" * 2_000_000, "cron": "30 2 * * *"}  # fmt: skip
    r = alice_api.post("/api/schedules/", body, format="json")
    assert r.status_code == 400
    assert f"no more than {limit} bytes (it has 2000000)" in str(r.data["prompt"]), r.data
    assert not Schedule.objects.exists()
    # bytes, as a run's message: "é" takes two
    body["prompt"] = "é" * (limit // 2)
    r = alice_api.post("/api/schedules/", body, format="json")
    assert r.status_code == 201, r.data
    r = alice_api.patch(f"/api/schedules/{r.data['id']}/", {"prompt": body["prompt"] + "x"})
    assert r.status_code == 400
    assert "prompt" in r.data
    assert Schedule.objects.get().prompt == body["prompt"]


def test_it_caps_the_schedules_one_user_has(alice, alice_api, bob, bob_api, settings):
    settings.SCHEDULES_MAX_PER_USER = 3

    def create(api, user, name):
        body = {"name": name, "target": "agent", "agent": user.agents.get().pk, "prompt": "Hi",
                "cron": "0 9 * * *"}  # fmt: skip
        return api.post("/api/schedules/", body, format="json")

    assert [create(alice_api, alice, f"s{i}").status_code for i in range(3)] == [201] * 3
    r = create(alice_api, alice, "s3")
    assert r.status_code == 429
    assert r.data["code"] == "too_many_schedules"
    assert "3 schedules, the most allowed" in r.data["detail"]
    assert alice.schedules.count() == PeriodicTask.objects.count() == 3
    assert create(bob_api, bob, "s0").status_code == 201  # a cap per user
    alice_api.delete(f"/api/schedules/{alice.schedules.first().pk}/")
    assert create(alice_api, alice, "s3").status_code == 201


def test_it_refuses_another_users_agent_and_thread(alice, alice_api, bob):
    thread = create_thread(owner=bob, agent=bob.agents.get())
    body = {"name": "D", "target": "agent", "agent": bob.agents.get().pk, "prompt": "Hi",
            "cron": "* * * * *", "thread": thread.pk}  # fmt: skip
    r = alice_api.post("/api/schedules/", body, format="json")
    assert r.status_code == 400
    assert {"agent", "thread"} <= set(r.data)


def test_it_hides_other_users_schedules(alice, bob_api):
    schedule = agent_schedule(alice)
    assert bob_api.get(f"/api/schedules/{schedule.pk}/").status_code == 404
    assert bob_api.post(f"/api/schedules/{schedule.pk}/trigger/").status_code == 404


def test_it_previews_the_next_fires(alice_api):
    r = alice_api.post(
        "/api/schedules/preview/",
        {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "count": 3},
        format="json",
    )
    assert r.status_code == 200
    assert len(r.data["next"]) == 3
    assert all(t.endswith(("+01:00", "+02:00")) for t in r.data["next"])
    bad = alice_api.post(
        "/api/schedules/preview/", {"cron": "* 24 * * *", "timezone": "Nowhere"}, format="json"
    )
    assert bad.status_code == 400
    assert "hour: 24 is out of range 0-23" in str(bad.data["cron"])
    assert "unknown time zone" in str(bad.data["timezone"])


def test_the_admin_lists_schedules_and_runs_one_now(alice, admin_client):
    schedule = agent_schedule(alice)
    page = admin_client.get("/admin/scheduling/schedule/").content.decode()
    assert "0 9 * * 1-5" in page
    assert "never fired" in page
    r = admin_client.post(
        "/admin/scheduling/schedule/",
        {"action": "run_now", "_selected_action": [schedule.pk]},
        follow=True,
    )
    assert r.status_code == 200
    assert schedule.fires.get().manual
    assert admin_client.get("/admin/django_celery_beat/periodictask/").status_code == 200


def test_the_schedules_page_shows_next_fire_last_outcome_and_runs(alice, client):
    schedule = agent_schedule(alice, cron="0 9 * * 1-5", timezone="Europe/Berlin")
    fire = schedule_fire(schedule_id=schedule.pk, manual=True)
    client.force_login(alice)
    page = client.get("/schedules/").content.decode()
    assert "Morning" in page
    assert "0 9 * * 1-5" in page
    assert "Next: " in page and "Never fired" not in page
    assert f'href="/chats/{fire.run.thread_id}/"' in page
    assert '<span class="badge completed">started</span>' in page


@pytest.mark.django_db(transaction=True)
def test_it_stops_the_previous_running_workflow_run_on_a_fixed_thread(alice):
    definition = {"steps": [{"id": "s", "type": "agent", "prompt": "Hi"}]}
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    thread = create_thread(owner=alice, agent=alice.agents.get())
    schedule = Schedule.objects.create(
        owner=alice, name="Fixed", target="workflow", workflow=workflow, thread=thread,
        cron="* * * * *", timezone="UTC", overlap="stop_previous",
    )  # fmt: skip
    first = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 0))
    previous = lifecycle.run_claim(run_id=first.run.pk, worker="w:1")

    def worker_honours_the_stop():  # as a worker does, within a second of the request
        wait_for(lambda: Run.objects.get(pk=previous.pk).stop_requested, timeout=5)
        lifecycle.run_finish(run=previous, status=Run.Status.STOPPED)
        connection.close()

    honour = threading.Thread(target=worker_honours_the_stop)
    honour.start()
    second = schedule_fire(schedule_id=schedule.pk, now=at(2026, 11, 25, 12, 1))
    honour.join()
    assert Run.objects.get(pk=previous.pk).status == Run.Status.STOPPED
    assert (second.outcome, second.run.thread) == ("started", thread), second.reason
