"""Webhooks end to end: real web, worker (consuming the `webhooks` queue) and beat processes on
a Redis of the test's own, and a real receiver on 127.0.0.1. Run with -s to see the delivery
timeline of the fail-twice test."""

import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from runs.models import Run
from webhooks import services
from webhooks.models import Attempt, Delivery

from conftest import bearer, new_thread, start, wait_for, wait_for_status
from live import Live
from webhook_receiver import HANG, Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENV = {
    "WEBHOOKS_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "WEBHOOKS_RETRY_SCHEDULE": "1,1,1",
    "WEBHOOKS_SWEEP_SECONDS": "1",
    "WEBHOOKS_TIMEOUT": "1",
    "RUN_REAPER_SECONDS": "1",
    "LLM_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens: a model never reached
}


@pytest.fixture
def processes(own_redis, tmp_path, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    live = Live(tmp_path, REDIS_URL=own_redis.url, **ENV)
    live.start_web()
    yield live
    live.stop_all()


def start_workers(live):
    live.start_worker(queues="runs,default,webhooks")
    live.start_beat()


def timeline(delivery, run):
    """Each attempt: seconds since the run ended, status, outcome."""
    rows = []
    for attempt in Attempt.objects.filter(delivery=delivery).order_by("number"):
        since = (attempt.started - run.finished).total_seconds()
        rows.append((attempt.number, round(since, 2), attempt.status_code, attempt.outcome))
    return rows


def test_a_receiver_failing_twice_gets_three_signed_attempts_with_one_id(processes, alice):
    receiver, one_off = Receiver([500, 500]), Receiver()
    try:
        start_workers(processes)
        endpoint = services.endpoint_create(owner=alice, url=receiver.url,
                                            events=["run.completed"])  # fmt: skip
        headers = bearer(alice)
        run_id = start(processes, headers, new_thread(alice, words=5), webhook=one_off.url)
        got = receiver.wait(3, timeout=30)
        run = wait_for_status(run_id, Run.Status.COMPLETED)
        assert {r.headers["webhook-id"] for r in got} == {
            f"msg_{Delivery.objects.get(endpoint=endpoint).id.hex}"
        }
        for request in got:
            payload = Webhook(endpoint.secret).verify(request.body, request.headers)
            assert payload["type"] == "run.completed" and payload["data"]["id"] == run_id
            assert payload["data"]["status"] == "completed" and payload["data"]["agent"]
        assert len({r.body for r in got}) == 1  # the same bytes each time
        delivery = wait_for(
            lambda: Delivery.objects.filter(endpoint=endpoint, status="delivered").first(),
            message="the delivery recorded as delivered",
        )
        rows = timeline(delivery, run)
        print("\nattempt  since end (s)  status  outcome")
        for number, since, status, outcome in rows:
            print(f"{number:>7}  {since:>13.2f}  {status!s:>6}  {outcome}")
        assert [(n, s, o) for n, _, s, o in rows] == [
            (1, 500, "http_error"), (2, 500, "http_error"), (3, 200, "delivered")
        ]  # fmt: skip
        assert rows[0][1] < 2 and rows[1][1] - rows[0][1] >= 1 and rows[2][1] - rows[1][1] >= 1
        # the API shows them, newest first
        r = httpx.get(f"{processes.base_url}/api/webhooks/{endpoint.pk}/deliveries/",
                      headers=headers)  # fmt: skip
        assert r.status_code == 200
        (shown,) = r.json()["results"]
        assert [a["outcome"] for a in shown["attempts"]] == [
            "http_error",
            "http_error",
            "delivered",
        ]
        # the run's one-off webhook: its end, signed with alice's one-off secret
        (request,) = one_off.wait(1)
        secret = services.signing_secret_get(owner=alice).secret
        assert Webhook(secret).verify(request.body, request.headers)["data"]["id"] == run_id
    finally:
        receiver.stop()
        one_off.stop()


def test_a_receiver_that_hangs_times_out_and_is_retried(processes, alice):
    receiver = Receiver([HANG])
    try:
        start_workers(processes)
        services.endpoint_create(owner=alice, url=receiver.url, events=["run.completed"])
        start(processes, bearer(alice), new_thread(alice, words=5))
        receiver.wait(2, timeout=30)
        delivery = wait_for(lambda: Delivery.objects.filter(status="delivered").first(),
                            message="the delivery delivered")  # fmt: skip
        attempts = list(delivery.attempt_set.order_by("number"))
        assert [a.outcome for a in attempts] == ["timeout", "delivered"]
        assert 900 <= attempts[0].duration_ms < 3000, attempts[0].duration_ms
    finally:
        receiver.stop()


def test_an_end_while_the_broker_is_away_is_delivered_once_it_is_back(processes, own_redis,
                                                                       alice):  # fmt: skip
    receiver = Receiver()
    try:
        endpoint = services.endpoint_create(owner=alice, url=receiver.url,
                                            events=["run.stopped"])  # fmt: skip
        headers = bearer(alice)
        run_id = start(processes, headers, new_thread(alice))  # queued: no worker yet
        own_redis.kill()
        r = httpx.post(f"{processes.base_url}/api/runs/{run_id}/stop/", headers=headers,
                       timeout=30)  # fmt: skip
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "stopped"
        delivery = Delivery.objects.get(endpoint=endpoint)
        assert (delivery.status, delivery.attempts, delivery.enqueued) == ("pending", 0, None)
        time.sleep(1)
        assert receiver.received == []
        own_redis.start()  # empty, as a Redis without persistence comes back
        start_workers(processes)
        (request,) = receiver.wait(1, timeout=30)
        payload = Webhook(endpoint.secret).verify(request.body, request.headers)
        assert payload["type"] == "run.stopped" and payload["data"]["id"] == run_id
        assert request.headers["webhook-id"] == delivery.webhook_id
        wait_for(lambda: Delivery.objects.get(pk=delivery.pk).status == "delivered",
                 message="the delivery recorded")  # fmt: skip
    finally:
        receiver.stop()
