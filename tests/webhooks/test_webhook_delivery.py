"""The outbox and the attempts, in this process against a real receiver on 127.0.0.1: a
Delivery commits with the run's end (or wait) or not at all, each attempt is signed and
verifiable with the standardwebhooks package, failures are retried on WEBHOOKS_RETRY_SCHEDULE,
a hanging receiver times out, redirects are not followed, private addresses are refused at
delivery, one attempt at a time, the sweep sends what is due, and old deliveries are pruned."""

import json
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents import services as agents
from runs import lifecycle
from runs.errors import QueueUnavailable
from runs.models import Run
from webhooks import services, signals
from webhooks.models import Attempt, Delivery, Endpoint
from webhooks.tasks import deliver_webhook_task

from conftest import new_thread, wait_for, waiting_run
from live import ROOT, free_port
from webhook_receiver import HANG, Receiver

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit sends, as in production


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    settings.WEBHOOKS_RETRY_SCHEDULE = [5, 60]
    settings.WEBHOOKS_TIMEOUT = 2
    return settings


def endpoint_of(user, url, events=("run.completed", "run.failed", "run.stopped", "run.waiting")):
    return services.endpoint_create(owner=user, url=url, events=list(events))


def stopped_run(user, no_queue):
    run = agents.agent_start(user=user, thread=new_thread(user), message="hi")
    lifecycle.run_stop(run=run)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    return run


def attempt(delivery):
    return services.delivery_attempt(delivery_id=delivery.pk)


def test_an_end_writes_one_delivery_per_endpoint_that_wants_it(alice, bob, no_queue, receiver):
    wants = endpoint_of(alice, receiver.url, events=["run.stopped"])
    endpoint_of(alice, receiver.url, events=["run.completed"])  # not this event
    off = endpoint_of(alice, receiver.url)
    off.enabled = False
    off.save()
    endpoint_of(bob, receiver.url)  # not bob's run
    run = stopped_run(alice, no_queue)
    (delivery,) = Delivery.objects.all()
    assert (delivery.endpoint, delivery.run, delivery.event) == (wants, run, "run.stopped")
    assert delivery.status == "pending" and delivery.next_attempt <= timezone.now()
    assert no_queue.args(deliver_webhook_task) == [[str(delivery.pk)]]
    body = json.loads(delivery.body)
    assert body["type"] == "run.stopped" and body["data"]["id"] == str(run.pk)
    assert body["data"]["status"] == "stopped" and body["data"]["agent"] == run.agent_link.agent_id


def test_an_end_rolled_back_leaves_no_delivery(alice, no_queue, receiver):
    endpoint_of(alice, receiver.url)
    run = agents.agent_start(user=alice, thread=new_thread(alice), message="hi")
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.run_stop(run=run)
        assert Delivery.objects.count() == 1
        raise RuntimeError("the change is rolled back")
    assert not Delivery.objects.exists()
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED


def test_a_waiting_run_is_delivered_as_run_waiting_with_its_request(alice, no_queue, receiver):
    endpoint_of(alice, receiver.url)
    waiting_run(alice, no_queue)
    (delivery,) = Delivery.objects.all()
    assert delivery.event == "run.waiting"
    assert json.loads(delivery.body)["data"]["pending"][0]["name"] == "calculator"


def test_an_attempt_is_signed_and_verifies_with_standardwebhooks(alice, no_queue, receiver):
    endpoint = endpoint_of(alice, receiver.url)
    run = stopped_run(alice, no_queue)
    delivery = Delivery.objects.get()
    done = attempt(delivery)
    assert (done.number, done.outcome, done.status_code) == (1, "delivered", 200)
    (got,) = receiver.wait(1)
    assert got.headers["webhook-id"] == delivery.webhook_id
    payload = Webhook(endpoint.secret).verify(got.body, got.headers)
    assert payload["type"] == "run.stopped" and payload["data"]["id"] == str(run.pk)
    assert got.headers["Content-Type"] == "application/json"
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.ended and delivery.claimed_until is None
    with pytest.raises(Exception, match="signature"):
        Webhook(services.signing_secret_get(owner=alice).secret).verify(got.body, got.headers)
    assert attempt(delivery) is None  # delivered: nothing more


def test_a_rotated_secret_signs_beside_the_new_one_for_the_grace(alice, no_queue, receiver,
                                                                 settings):  # fmt: skip
    endpoint = endpoint_of(alice, receiver.url, events=["run.stopped"])
    old = endpoint.secret
    new = services.endpoint_rotate(endpoint=endpoint)
    stopped_run(alice, no_queue)
    settings.WEBHOOKS_ROTATION_GRACE = 0
    stopped_run(alice, no_queue)  # rotated again below, without a grace: the old one is gone
    first, second = Delivery.objects.order_by("created")
    attempt(first)
    endpoint.refresh_from_db()
    newest = services.endpoint_rotate(endpoint=endpoint)
    attempt(second)
    with_grace, without = receiver.wait(2)
    assert len(with_grace.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(with_grace.body, with_grace.headers)
    assert len(without.headers["webhook-signature"].split(" ")) == 1
    Webhook(newest).verify(without.body, without.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(new).verify(without.body, without.headers)


def test_failures_are_retried_on_the_schedule_then_fail_for_good(alice, no_queue):
    receiver = Receiver(then=503)
    try:
        endpoint_of(alice, receiver.url)
        stopped_run(alice, no_queue)
        delivery = Delivery.objects.get()
        first = attempt(delivery)
        assert (first.outcome, first.status_code) == ("http_error", 503)
        assert "503" in first.error and first.response == "ok"
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.enqueued is None
        due = delivery.next_attempt - first.started
        assert timedelta(seconds=4.5) < due < timedelta(seconds=7)
        assert attempt(delivery) is None  # not due yet
        for number, delay in [(2, 60), (3, None)]:
            Delivery.objects.filter(pk=delivery.pk).update(next_attempt=timezone.now())
            assert attempt(delivery).number == number
            delivery.refresh_from_db()
            if delay:
                assert delivery.next_attempt - timezone.now() > timedelta(seconds=delay - 5)
        assert delivery.status == "failed" and delivery.next_attempt is None
        ids = {r.headers["webhook-id"] for r in receiver.wait(3)}
        assert ids == {delivery.webhook_id}
    finally:
        receiver.stop()


def test_a_receiver_that_hangs_times_out_and_is_retried(alice, no_queue, webhook_settings):
    webhook_settings.WEBHOOKS_TIMEOUT = 0.5
    receiver = Receiver([HANG])
    try:
        endpoint_of(alice, receiver.url)
        stopped_run(alice, no_queue)
        delivery = Delivery.objects.get()
        timed_out = attempt(delivery)
        assert timed_out.outcome == "timeout" and timed_out.status_code is None
        assert 400 <= timed_out.duration_ms < 2000, timed_out.duration_ms
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt=timezone.now())
        assert attempt(delivery).outcome == "delivered"
    finally:
        receiver.stop()


def test_a_disabled_endpoints_pending_delivery_ends_unsent(alice, no_queue, receiver):
    endpoint = endpoint_of(alice, receiver.url)
    stopped_run(alice, no_queue)
    Endpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
    seen = []
    signals.attempt_recorded.connect(lambda sender, **kw: seen.append(kw), weak=False,
                                     dispatch_uid="test")  # fmt: skip
    try:
        Delivery.objects.update(attempts=len(settings_schedule()))  # its last attempt
        done = attempt(Delivery.objects.get())
    finally:
        signals.attempt_recorded.disconnect(dispatch_uid="test")
    assert (done.outcome, done.error) == ("refused", "the endpoint is disabled")
    assert Delivery.objects.get().status == "failed" and receiver.received == []
    assert [(s["attempt"].outcome, s["delivery"].status) for s in seen] == [("refused", "failed")]


def settings_schedule():
    return services.retry_schedule()


def test_a_redirect_is_a_failed_attempt_not_followed(alice, no_queue):
    receiver = Receiver([302])
    try:
        endpoint_of(alice, receiver.url)
        stopped_run(alice, no_queue)
        done = attempt(Delivery.objects.get())
        assert (done.outcome, done.status_code) == ("http_error", 302)
        assert "redirect" in done.error
        assert len(receiver.received) == 1
    finally:
        receiver.stop()


def test_a_connection_refused_is_a_connection_error(alice, no_queue, receiver):
    endpoint_of(alice, "http://127.0.0.1:9/hook")  # nothing listens on the discard port
    stopped_run(alice, no_queue)
    assert attempt(Delivery.objects.get()).outcome == "connection_error"


def test_a_private_address_is_refused_at_delivery(alice, no_queue, receiver, webhook_settings):
    endpoint_of(alice, receiver.url)  # saved while private addresses were allowed
    stopped_run(alice, no_queue)
    webhook_settings.WEBHOOKS_ALLOW_PRIVATE = False
    refused = attempt(Delivery.objects.get())
    assert refused.outcome == "refused" and "WEBHOOKS_ALLOW_PRIVATE" in refused.error
    assert "127.0.0.1" in refused.error and receiver.received == []


def test_one_attempt_at_a_time(alice, no_queue, webhook_settings):
    webhook_settings.WEBHOOKS_TIMEOUT = 1
    receiver = Receiver([HANG])
    try:
        endpoint_of(alice, receiver.url)
        stopped_run(alice, no_queue)
        delivery = Delivery.objects.get()
        first = threading.Thread(target=attempt, args=(delivery,))
        first.start()
        receiver.wait(1)
        assert attempt(delivery) is None  # a redelivered task, a second sweep: no second POST
        first.join(5)
        assert len(receiver.received) == 1
        assert list(Attempt.objects.values_list("outcome", flat=True)) == ["timeout"]
    finally:
        receiver.stop()


def test_a_one_off_webhook_gets_the_end_signed_with_the_users_secret(alice, no_queue, receiver):
    thread = new_thread(alice, tools=["calculator", "ask_user"], approve_tools=["calculator"])
    run = agents.agent_start(user=alice, thread=thread, webhook=receiver.url,
                             message='/tool calculator {"expression": "6*7"}')  # fmt: skip
    no_queue.run()
    assert Run.objects.get(pk=run.pk).status == Run.Status.WAITING
    assert not Delivery.objects.exists()  # a one-off webhook gets the end only
    lifecycle.run_stop(run=run)
    delivery = Delivery.objects.get()
    assert (delivery.endpoint, delivery.url, delivery.event) == (None, receiver.url, "run.stopped")
    assert attempt(delivery).outcome == "delivered"
    (got,) = receiver.wait(1)
    secret = services.signing_secret_get(owner=alice).secret
    assert Webhook(secret).verify(got.body, got.headers)["data"]["status"] == "stopped"


def test_the_sweep_sends_what_is_due_once(alice, no_queue, receiver, settings):
    endpoint_of(alice, receiver.url)
    stopped_run(alice, no_queue)
    delivery = Delivery.objects.get()
    no_queue.sent.clear()
    assert services.deliveries_sweep() == 0  # its task was sent on commit, just now
    Delivery.objects.update(enqueued=None)  # the broker refused it
    assert services.deliveries_sweep() == 1
    assert services.deliveries_sweep() == 0
    assert no_queue.args(deliver_webhook_task) == [[str(delivery.pk)]]
    Delivery.objects.update(enqueued=timezone.now() - timedelta(seconds=120))  # a lost message
    assert services.deliveries_sweep() == 1
    no_queue.run()
    assert Delivery.objects.get().status == "delivered"
    Delivery.objects.update(status="pending", next_attempt=timezone.now() + timedelta(hours=1),
                            enqueued=None)  # fmt: skip
    assert services.deliveries_sweep() == 0  # not due


def test_ended_deliveries_beyond_the_kept_count_are_pruned(alice, receiver, settings):
    settings.WEBHOOKS_DELIVERIES_KEPT = 3
    endpoint = endpoint_of(alice, receiver.url)
    for status in ["delivered"] * 4 + ["failed"] + ["pending"] * 2:
        Delivery.objects.create(owner=alice, endpoint=endpoint, event="run.completed", body="{}",
                                status=status)  # fmt: skip
    services.deliveries_prune(owner_id=alice.pk, endpoint_id=endpoint.pk)
    assert Delivery.objects.filter(status="pending").count() == 2
    assert Delivery.objects.exclude(status="pending").count() == 3


def test_an_ended_delivery_prunes_its_endpoints_oldest(alice, no_queue, receiver, settings):
    settings.WEBHOOKS_DELIVERIES_KEPT = 1
    endpoint_of(alice, receiver.url)
    for _ in range(2):
        stopped_run(alice, no_queue)
        no_queue.run()
    assert list(Delivery.objects.values_list("status", flat=True)) == ["delivered"]
    assert len(receiver.wait(2)) == 2


def test_pending_deliveries_beyond_the_cap_fail_oldest_first(alice, receiver, settings):
    settings.WEBHOOKS_PENDING_MAX = 2
    endpoint = endpoint_of(alice, receiver.url)
    rows = [
        Delivery.objects.create(
            owner=alice,
            endpoint=endpoint,
            event="run.completed",
            body="{}",
            next_attempt=timezone.now() + timedelta(hours=1),
        )
        for _ in range(3)
    ]
    services.deliveries_sweep()
    statuses = {d.pk: (d.status, d.error) for d in Delivery.objects.all()}
    assert statuses[rows[0].pk][0] == "failed" and "WEBHOOKS_PENDING_MAX" in statuses[rows[0].pk][1]
    assert statuses[rows[1].pk][0] == statuses[rows[2].pk][0] == "pending"


def test_the_admin_sends_a_delivery_again_with_the_same_id(alice, no_queue, admin_client):
    receiver = Receiver([500])
    try:
        endpoint_of(alice, receiver.url)
        stopped_run(alice, no_queue)
        delivery = Delivery.objects.get()
        Delivery.objects.update(status="failed", next_attempt=None)  # as if its schedule ran out
        attempt_row = Attempt.objects.create(delivery=delivery, number=1, started=timezone.now(),
                                             duration_ms=1, outcome="http_error")  # fmt: skip
        Delivery.objects.update(attempts=1)
        no_queue.sent.clear()
        r = admin_client.post("/admin/webhooks/delivery/", {
            "action": "send_again", "_selected_action": [str(delivery.pk)]})  # fmt: skip
        assert r.status_code == 302
        no_queue.run()
        assert attempt_row.delivery.attempt_set.count() == 2
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.resent_after == 1
        assert receiver.wait(1)[0].headers["webhook-id"] == delivery.webhook_id
        page = admin_client.get(f"/admin/webhooks/delivery/{delivery.pk}/change/")
        assert page.status_code == 200 and b"http_error" in page.content
    finally:
        receiver.stop()


def test_a_payload_over_the_cap_leaves_the_requests_out(alice, no_queue, receiver, settings):
    settings.WEBHOOKS_MAX_PAYLOAD_BYTES = 200
    endpoint_of(alice, receiver.url)
    waiting_run(alice, no_queue)
    body = json.loads(Delivery.objects.get().body)
    assert body["truncated"] is True and body["data"]["pending"][0].keys() == {"id", "kind"}


def test_the_receiver_in_the_deploy_docs_verifies_a_delivery(alice, no_queue, tmp_path, settings):
    """docs/deploy.md's ten-line receiver, as written, with the secret and port filled in."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("## Receiving webhooks") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    port = free_port()
    endpoint = endpoint_of(alice, f"http://127.0.0.1:{port}/")
    code = code.replace('"whsec_..."', repr(endpoint.secret))
    code = code.replace('("0.0.0.0", 8080)', f'("127.0.0.1", {port})')
    script = tmp_path / "receiver.py"
    script.write_text(code)
    process = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: _listening(port), timeout=10, message="the receiver to listen")
        stopped_run(alice, no_queue)
        delivery = Delivery.objects.get()
        done = attempt(delivery)
        assert (done.outcome, done.status_code) == ("delivered", 204)
        settings.WEBHOOKS_ROTATION_GRACE = 0
        services.endpoint_rotate(endpoint=endpoint)  # signed with a secret it does not know
        Delivery.objects.filter(pk=delivery.pk).update(
            status="pending", next_attempt=timezone.now()
        )
        refused = attempt(delivery)
        assert (refused.outcome, refused.status_code) == ("http_error", 400)
    finally:
        process.kill()
    output = process.communicate(timeout=5)[0]
    assert f"{delivery.webhook_id} run.stopped stopped" in output, output


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_a_start_the_queue_refused_sends_no_webhook(alice, no_queue, receiver, monkeypatch):
    endpoint_of(alice, receiver.url)
    thread = new_thread(alice)

    def refuse(run_id):
        raise ConnectionError("the broker is away")

    monkeypatch.setattr(lifecycle, "send_run_task", refuse)
    with pytest.raises(QueueUnavailable):
        agents.agent_start(user=alice, thread=thread, message="hi", webhook=receiver.url)
    assert not Run.objects.exists() and not Delivery.objects.exists()


def test_the_sweep_sends_a_stale_task_again_only_while_the_queue_is_short(
    alice, no_queue, receiver, monkeypatch
):
    endpoint_of(alice, receiver.url)
    stopped_run(alice, no_queue)
    Delivery.objects.update(enqueued=timezone.now() - timedelta(seconds=120))
    monkeypatch.setattr(services, "queue_length", lambda: services.SWEEP_BATCH)  # no worker
    assert services.deliveries_sweep() == 0
    Delivery.objects.update(enqueued=None)  # never sent: sent whatever the queue holds
    assert services.deliveries_sweep() == 1


def test_a_fault_in_the_webhooks_does_not_keep_a_run_from_ending(alice, no_queue, receiver,
                                                                 monkeypatch):  # fmt: skip
    endpoint_of(alice, receiver.url)

    def broken(run, event):
        raise ValueError("a bug")

    monkeypatch.setattr(services, "payload", broken)
    stopped_run(alice, no_queue)  # asserts it is stopped
    assert not Delivery.objects.exists()
