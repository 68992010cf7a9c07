"""Writes that race a delete of what they touch answer 404 or 409, never 500 (found by the
schema's fuzz run with several workers at once); a user's lock holds back no row that refers
to the user (found by bench/runs.py --integrations: a start and an end deadlocked)."""

import threading

import pytest
from django.db import connection, transaction
from django.db.models.signals import pre_save

from agents.models import Agent, agent_of
from runs.lifecycle import user_lock
from runs.models import Thread
from scheduling.models import Schedule

from conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit


def test_a_thread_given_an_agent_deleted_meanwhile_is_a_409(alice, thread):
    doomed = Agent.objects.create(owner=alice, name="Doomed")

    def delete_the_agent(sender, instance, **kwargs):  # after validation, before the write
        Agent.objects.filter(pk=doomed.pk).delete()

    pre_save.connect(delete_the_agent, sender=Thread)
    try:
        r = client_for(alice).patch(f"/api/threads/{thread.pk}/", {"agent": doomed.pk})
    finally:
        pre_save.disconnect(delete_the_agent, sender=Thread)
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    thread.refresh_from_db()
    assert agent_of(thread) == alice.agents.get(name="Demo")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: PostgreSQL")
def test_a_schedule_updated_while_it_is_deleted_is_updated_then_deleted(alice):
    api = client_for(alice)
    schedule = api.post(
        "/api/schedules/",
        {"name": "S", "target": "agent", "agent": alice.agents.get().pk, "prompt": "Hi",
         "cron": "0 * 1 1 *"},
    ).json()  # fmt: skip
    locked, deleted = threading.Event(), {}

    def hold_the_row(sender, instance, **kwargs):  # the update has its row: a delete comes now
        if not locked.is_set():
            locked.set()
            deleting.join(0.5)  # it waits for this update's commit

    def delete():
        locked.wait(10)
        deleted["status"] = client_for(alice).delete(f"/api/schedules/{schedule['id']}/")
        connection.close()

    deleting = threading.Thread(target=delete)
    deleting.start()
    pre_save.connect(hold_the_row, sender=Schedule)
    try:
        r = api.patch(f"/api/schedules/{schedule['id']}/", {"prompt": "Hello"})
    finally:
        pre_save.disconnect(hold_the_row, sender=Schedule)
        deleting.join(10)
    assert r.status_code == 200, r.content
    assert deleted["status"].status_code == 204
    assert not Schedule.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite locks the whole file")
def test_a_users_lock_does_not_hold_back_a_row_that_refers_to_the_user(alice):
    """A start holds its user's row (user_lock) while it waits for its day's usage row; a
    worker ending a run holds that usage row and inserts its webhook deliveries, whose foreign
    key to the user takes a KEY SHARE lock. FOR UPDATE would make that insert wait: a deadlock."""
    held, done = threading.Event(), threading.Event()

    def start():
        try:
            with transaction.atomic():
                user_lock(alice)
                held.set()
                done.wait(10)
        finally:
            connection.close()

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert held.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")  # else it would wait for done
            Thread.objects.create(owner=alice, title="written while her row is held")
    finally:
        done.set()
        starter.join(10)
