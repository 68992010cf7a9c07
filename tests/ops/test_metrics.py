"""Metrics: what processes record (runs/metrics.py) is added up in Redis and shown by /metrics
(ops/), with the scrape-time gauges; capped labels fold into "other"; the token guards it.
The numbers are shared by the whole session (its Redis), so each test reads what changed."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client import generate_latest

from agents import services, tools
from ops.collector import registry
from runs import lifecycle, metrics, repair, stream
from runs.models import Run
from scheduling.models import Schedule
from scheduling.services import schedule_fire

from conftest import metric_samples, new_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

WIDGETS = metrics.counter(
    "relay_test_widgets_total", "Widgets (tests)", labels=("widget",), capped=("widget",)
)
GEARS = metrics.counter("relay_test_gears_total", "Gears (tests)", ("gear",), capped=("gear",))
SIZES = metrics.histogram("relay_test_sizes", "Sizes (tests)", buckets=(1, 10), labels=("shape",))


def scrape():
    return metric_samples(generate_latest(registry).decode())


def delta(before, after, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0) - before.get(key, 0)


@pytest.fixture
def fresh_process(monkeypatch):
    """This process as if it had just started: nothing buffered, no label values known."""
    metrics.flush()
    buffer = metrics.Buffer()
    monkeypatch.setattr(metrics, "_buffer", buffer)
    return buffer


def test_it_adds_up_what_is_recorded_and_shows_it_once_flushed(fresh_process):
    before = scrape()
    WIDGETS.inc(widget="cog")
    WIDGETS.inc(2, widget="cog")
    assert delta(before, scrape(), "relay_test_widgets_total", widget="cog") == 0
    metrics.flush()
    assert delta(before, scrape(), "relay_test_widgets_total", widget="cog") == 3


def test_a_second_process_adds_to_the_same_numbers(fresh_process, monkeypatch):
    before = scrape()
    WIDGETS.inc(widget="cog")
    metrics.flush()
    monkeypatch.setattr(metrics, "_buffer", metrics.Buffer())  # another process
    WIDGETS.inc(widget="cog")
    metrics.flush()
    assert delta(before, scrape(), "relay_test_widgets_total", widget="cog") == 2


def test_a_histogram_has_cumulative_buckets_a_sum_and_a_count(fresh_process):
    before = scrape()
    for value in (0.5, 1, 3, 100):
        SIZES.observe(value, shape="round")
    metrics.flush()
    after = scrape()
    bucket = "relay_test_sizes_bucket"
    assert delta(before, after, bucket, shape="round", le="1.0") == 2
    assert delta(before, after, bucket, shape="round", le="10.0") == 3
    assert delta(before, after, bucket, shape="round", le="+Inf") == 4
    assert delta(before, after, "relay_test_sizes_count", shape="round") == 4
    assert delta(before, after, "relay_test_sizes_sum", shape="round") == pytest.approx(104.5)


def test_it_folds_a_capped_label_beyond_its_cap_into_other(fresh_process, settings, monkeypatch):
    settings.METRICS_LABEL_VALUES_MAX = 2
    before = scrape()
    for gear in ("a", "b", "c", "d", "a"):
        GEARS.inc(gear=gear)
    metrics.flush()
    monkeypatch.setattr(metrics, "_buffer", metrics.Buffer())  # another process, same cap
    for gear in ("e", "b"):
        GEARS.inc(gear=gear)
    metrics.flush()
    after = scrape()
    counts = {g: delta(before, after, "relay_test_gears_total", gear=g) for g in "abcde"}
    assert counts == {"a": 2, "b": 2, "c": 0, "d": 0, "e": 0}
    assert delta(before, after, "relay_test_gears_total", gear="other") == 3
    gears = {k[1] for k in after if k[0] == "relay_test_gears_total"}
    assert gears == {(("gear", "a"),), (("gear", "b"),), (("gear", "other"),)}


def test_it_refuses_labels_other_than_declared():
    with pytest.raises(ValueError, match="takes the labels"):
        WIDGETS.inc(colour="red")


def test_it_records_nothing_when_metrics_are_off(fresh_process, settings):
    settings.METRICS_ENABLED = False
    before = scrape()
    WIDGETS.inc(widget="cog")
    SIZES.observe(1, shape="round")
    metrics.flush()
    assert fresh_process._sums == {}
    assert delta(before, scrape(), "relay_test_widgets_total", widget="cog") == 0


def test_a_flush_that_fails_keeps_its_counts_for_the_next(fresh_process, settings):
    before = scrape()
    WIDGETS.inc(widget="cog")
    url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens
    metrics.flush()
    text = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t").content  # no token yet: 404
    assert text == b"Not found.\n"
    settings.METRICS_TOKEN = "t"
    down = metric_samples(Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode())
    assert down[("relay_metrics_source_up", (("source", "redis"),))] == 0
    assert ("relay_runs_active", (("status", "queued"),)) in down  # the database still answers
    settings.REDIS_URL = url
    metrics.flush()
    assert delta(before, scrape(), "relay_test_widgets_total", widget="cog") == 1


def test_the_endpoint_is_closed_without_a_token_and_wants_the_right_one(settings):
    web = Client()
    assert web.get("/metrics").status_code == 404
    settings.METRICS_TOKEN = "s3cret-token"
    assert web.get("/metrics").status_code == 401
    assert web.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert web.get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-token").status_code == 401
    assert web.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token\u00e9").status_code == 401
    answer = web.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE relay_runs_started_total counter" in answer.content
    assert web.post("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 405


def test_it_is_not_in_the_api_schema():
    schema = Client().get("/api/schema/?format=json").json()
    assert not [p for p in schema["paths"] if "metrics" in p]


def test_it_counts_a_run_from_its_start_to_its_end(alice, no_queue):
    before = scrape()
    run = services.agent_start(user=alice, thread=new_thread(alice, words=5), message="Hi")
    started = scrape()
    assert delta(before, started, "relay_runs_started_total", kind="agent", trigger="api") == 1
    assert delta(before, started, "relay_runs_active", status="queued") == 1
    no_queue.run()
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED
    after = scrape()
    finished = {"kind": "agent", "trigger": "api", "status": "completed"}
    assert delta(before, after, "relay_runs_finished_total", **finished) == 1
    duration = "relay_run_duration_seconds_count"
    assert delta(before, after, duration, kind="agent", status="completed") == 1
    assert delta(before, after, "relay_run_time_to_first_event_seconds_count", kind="agent") == 1
    assert delta(before, after, "relay_tokens_total", direction="input") > 0
    assert delta(before, after, "relay_tokens_total", direction="output") > 0
    assert delta(before, after, "relay_runs_active", status="queued") == 0


def test_it_counts_tool_calls_by_tool_and_outcome():
    before = scrape()
    tools.call("calculator", '{"expression": "6*7"}', allowed=["calculator"], user=1, run="r")
    tools.call("calculator", '{"expression": "6/0"}', allowed=["calculator"], user=1, run="r")
    tools.call("no_such_tool", "{}", allowed=["calculator"], user=1, run="r")
    metrics.flush()
    after = scrape()
    calls = "relay_tool_calls_total"
    assert delta(before, after, calls, tool="calculator", outcome="ok") == 1
    assert delta(before, after, calls, tool="calculator", outcome="error") == 1
    assert delta(before, after, calls, tool="unknown", outcome="invalid") == 1
    assert delta(before, after, "relay_tool_call_duration_seconds_count", tool="calculator") == 2


def test_it_counts_the_reapers_resumed_and_reaped_runs_and_its_heartbeat(alice, no_queue, settings):
    before = scrape()
    run = services.agent_start(user=alice, thread=new_thread(alice), message="Hi")

    def lose_a_worker():
        assert lifecycle.run_claim(run_id=run.pk, worker="lost-worker") is not None
        Run.objects.filter(pk=run.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
        no_queue.sent.clear()
        repair.runs_reap()

    lose_a_worker()
    after = scrape()
    assert delta(before, after, "relay_runs_resumed_total") == 1
    heartbeat = after[("relay_reaper_last_run_timestamp_seconds", ())]
    assert abs(heartbeat - timezone.now().timestamp()) < 60
    settings.RUN_MAX_ATTEMPTS = 1
    lose_a_worker()
    after = scrape()
    assert delta(before, after, "relay_runs_reaped_total", status="failed") == 1
    assert delta(before, after, "relay_runs_finished_total", kind="agent", trigger="api",
                 status="failed") == 1  # fmt: skip


def test_it_counts_schedule_fires_by_outcome(alice, no_queue):
    schedule = Schedule.objects.create(
        owner=alice, name="Every minute", target=Schedule.Target.AGENT, agent=alice.agents.get(),
        prompt="Hi", cron="* * * * *", timezone="UTC",
    )  # fmt: skip
    before = scrape()
    now = timezone.now().replace(second=1)
    schedule_fire(schedule_id=schedule.pk, now=now)
    schedule_fire(schedule_id=schedule.pk, now=now + timedelta(minutes=1))  # the first is active
    schedule_fire(schedule_id=schedule.pk, now=now + timedelta(minutes=1))  # that slot has fired
    after = scrape()
    assert delta(before, after, "relay_schedule_fires_total", outcome="started") == 1
    assert delta(before, after, "relay_schedule_fires_total", outcome="skipped") == 1
    assert delta(before, after, "relay_runs_started_total", kind="agent", trigger="schedule") == 1


def test_it_reads_the_queue_lengths_from_the_broker(settings):
    broker = metrics.client()  # the session's Redis is its broker too
    broker.delete("webhooks")
    broker.lpush("webhooks", "one", "two")
    try:
        assert scrape()[("relay_queue_length", (("queue", "webhooks"),))] == 2
    finally:
        broker.delete("webhooks")
    settings.CELERY_BROKER_URL = "amqp://guest@127.0.0.1:1//"
    samples = scrape()
    assert not [k for k in samples if k[0] == "relay_queue_length"]
    assert ("relay_metrics_source_up", (("source", "broker"),)) in samples


def test_it_counts_the_open_streams_across_processes():
    before = scrape()[("relay_streams_open", ())]
    slots = [stream.stream_slot_take(user_id) for user_id in (1, 1, 2)]
    assert scrape()[("relay_streams_open", ())] == before + 3
    stream.stream_slot_free(1, slots[0])
    assert scrape()[("relay_streams_open", ())] == before + 2
    stream.stream_slot_free(1, slots[1])
    stream.stream_slot_free(2, slots[2])


def test_it_counts_webhook_attempts_by_outcome_and_the_oldest_pending(alice, no_queue, settings):
    from webhooks import services as webhooks
    from webhooks.models import Delivery

    from webhook_receiver import Receiver

    settings.WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    receiver = Receiver(then=503)
    try:
        webhooks.endpoint_create(owner=alice, url=receiver.url, events=["run.stopped"])
        run = services.agent_start(user=alice, thread=new_thread(alice), message="hi")
        lifecycle.run_stop(run=run)
        delivery = Delivery.objects.get()
        Delivery.objects.filter(pk=delivery.pk).update(
            created=timezone.now() - timedelta(minutes=10)
        )
        before = scrape()
        webhooks.delivery_attempt(delivery_id=delivery.pk)
        metrics.flush()  # the delivery task's flush
        after = scrape()
    finally:
        receiver.stop()
    assert delta(before, after, "relay_webhook_deliveries_total", outcome="http_error") == 1
    assert delta(before, after, "relay_webhook_deliveries_total", outcome="delivered") == 0
    assert 590 < after[("relay_webhook_oldest_pending_seconds", ())] < 700
