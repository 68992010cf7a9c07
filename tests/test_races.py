"""Writes that race a delete of what they touch answer 404 or 409, never 500 (found by the
schema's fuzz run with several workers at once)."""

import threading

import pytest
from django.db import connection
from django.db.models.signals import pre_save

from agents.models import Agent, agent_of
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
