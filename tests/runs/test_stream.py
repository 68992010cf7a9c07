"""The Redis Streams event log behind django-eventstream."""

import threading
import time
import uuid

import httpx
import pytest
from django.test import override_settings

from agents import services
from runs import stream
from runs.eventstream import EventDoesNotExist
from runs.models import Run

from conftest import bearer, new_thread, start, start_live, wait_for
from sse import OpenStream


@pytest.fixture
def channel():
    return f"run-{uuid.uuid4()}"


@pytest.fixture
def storage():
    return stream.StreamStorage()


def test_it_numbers_events_from_one_and_returns_data_as_given(storage, channel):
    assert storage.get_current_id(channel) == 0
    ids = [storage.append_event(channel, "t", f'{{"n": {i}}}').id for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    events = storage.get_events(channel, 2)
    assert [(e.id, e.type, e.data) for e in events] == [
        (3, "t", '{"n": 2}'),
        (4, "t", '{"n": 3}'),
        (5, "t", '{"n": 4}'),
    ]
    assert storage.get_events(channel, 5) == []
    assert [e.id for e in storage.get_events(channel, 0, limit=2)] == [1, 2]
    assert storage.get_current_id(channel) == 5


def test_it_gives_consecutive_ids_to_racing_producers(storage, channel):
    def produce():
        for _ in range(100):
            storage.append_event(channel, "t", "{}")

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.id for e in storage.get_events(channel, 0, limit=1000)] == list(range(1, 401))


def test_it_resets_an_id_older_than_the_capped_log(storage, channel, settings):
    settings.RUN_EVENTS_MAXLEN = 10
    for _ in range(500):
        storage.append_event(channel, "t", "{}")
    with pytest.raises(EventDoesNotExist) as reset:
        storage.get_events(channel, 1)
    assert reset.value.current_id == 500
    # "~" trimming keeps whole macro nodes: the tail is still there
    assert [e.id for e in storage.get_events(channel, 495)] == [496, 497, 498, 499, 500]
    assert stream.client().xlen(stream.log_key(channel)) < 500


def test_it_resets_an_id_ahead_of_the_log(storage, channel):
    storage.append_event(channel, "t", "{}")
    with pytest.raises(EventDoesNotExist) as reset:
        storage.get_events(channel, 7)
    assert reset.value.current_id == 1


@pytest.mark.django_db
def test_it_keeps_a_finished_runs_log_for_the_retention_window(storage, settings):
    run_id = uuid.uuid4()
    stream.emit(run_id, "run.status", status="queued", error="")
    key = stream.log_key(f"run-{run_id}")
    assert stream.client().ttl(key) > settings.RUN_EVENTS_RETENTION
    stream.retain(run_id, None)
    assert 0 < stream.client().ttl(key) <= settings.RUN_EVENTS_RETENTION


def test_it_raises_and_reads_stop_flags():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    stream.request_stop(a)
    assert stream.stop_flags([a, b]) == {a}


def test_nothing_enters_a_log_after_its_runs_terminal_event():
    run_id = uuid.uuid4()
    stream.emit(run_id, "run.status", status="queued", error="")
    stream.emit(run_id, "run.status", status="failed", error="worker lost")  # the reaper
    # the worker that lost the run, late: its delta, its message, its own end
    stream.emit(run_id, "message.delta", message=1, text="late")
    stream.emit(run_id, "run.status", status="completed", error="")
    events = stream.StreamStorage().get_events(f"run-{run_id}", 0)
    assert [(e.id, e.type) for e in events] == [(1, "run.status"), (2, "run.status")]


def test_a_log_made_again_after_redis_lost_it_numbers_beyond_the_old_one(storage, channel):
    """A Redis restarted without persistence has no log: the run's next event must not be
    numbered 1 again, or a client's id from the old log would match an event of the new one."""
    assert storage.append_event(channel, "run.status", "{}").id == 1
    assert [storage.append_event(channel, "t", "{}", first=False).id for _ in range(3)] == [2, 3, 4]
    stream.client().delete(stream.log_key(channel), stream.meta_key(channel))  # the restart
    again = storage.append_event(channel, "t", "{}", first=False).id
    assert again > 4
    assert storage.append_event(channel, "t", "{}", first=False).id == again + 1
    # a client at 4 (or at any id of the old log) is told to reload
    for last in (0, 1, 4):
        with pytest.raises(EventDoesNotExist) as reset:
            storage.get_events(channel, last)
        assert reset.value.current_id == again + 1
    # and ids stay exact as JavaScript numbers (runs.js compares them with Number())
    assert again < 2**53


def test_a_log_another_redis_server_wrote_numbers_beyond_it(storage, channel):
    """A Redis restarted from its append-only file, or a replica promoted, may have lost the
    log's last appends, which clients may have received: their ids must not be given again."""
    assert [storage.append_event(channel, "t", "{}").id for _ in range(3)] == [1, 2, 3]
    stream.client().xdel(stream.log_key(channel), "3-0")  # 3 is lost...
    stream.client().hset(stream.meta_key(channel), "server", "the-one-before-the-restart")
    again = storage.append_event(channel, "t", "{}", first=False).id
    assert again > 3  # ...and a client that has it is told to reload
    with pytest.raises(EventDoesNotExist):
        storage.get_events(channel, 3)
    assert storage.append_event(channel, "t", "{}", first=False).id == again + 1


def test_it_caps_a_runs_log_in_bytes_and_keeps_the_newest(storage, channel, settings):
    settings.RUN_EVENTS_MAX_BYTES = 10_000
    data = "x" * 1000
    ids = [storage.append_event(channel, "t", data).id for _ in range(100)]
    assert ids == list(range(1, 101))  # ids go on: the log is trimmed at its oldest end
    kept = storage.get_events(channel, 95)
    assert [e.id for e in kept] == [96, 97, 98, 99, 100]
    with pytest.raises(EventDoesNotExist) as reset:
        storage.get_events(channel, 0)
    assert reset.value.current_id == 100
    entries = stream.client().xrange(stream.log_key(channel))
    held = sum(len(f["t"]) + len(f["d"]) for _, f in entries)
    assert held <= 10_000 < held + 1001
    assert int(stream.client().hget(stream.meta_key(channel), "bytes")) == held
    # the two keys live and die together
    ttl = stream.client().ttl(stream.meta_key(channel))
    assert ttl > 0 and abs(ttl - stream.client().ttl(stream.log_key(channel))) <= 1


def test_an_event_larger_than_the_cap_stays_only_until_the_next(storage, channel, settings):
    settings.RUN_EVENTS_MAX_BYTES = 10_000
    storage.append_event(channel, "t", "small")
    big = storage.append_event(channel, "message.done", "y" * 50_000)
    assert [e.id for e in storage.get_events(channel, big.id - 1)] == [big.id]
    end = storage.append_event(channel, "run.status", "end")
    assert [e.id for e in storage.get_events(channel, end.id - 1)] == [end.id]
    assert stream.client().xlen(stream.log_key(channel)) == 1
    assert int(stream.client().hget(stream.meta_key(channel), "bytes")) == len("run.status") + 3


@pytest.mark.django_db
def test_it_keeps_the_logs_of_one_users_newest_ended_runs_only(settings, alice, bob):
    settings.RUN_EVENTS_RETAINED_PER_USER = 3

    def ended_run(user):
        thread = new_thread(user)
        run = Run.objects.create(owner=user, thread=thread, kind="agent", status="completed")
        stream.emit(run.pk, "run.status", status="queued", error="")
        stream.emit(run.pk, "run.status", status="completed", error="")
        stream.retain(run.pk, user.pk)
        return run

    bobs = ended_run(bob)
    alices = [ended_run(alice) for _ in range(5)]
    exists = stream.client().exists
    assert [exists(stream.log_key(r.channel)) for r in alices] == [0, 0, 1, 1, 1]
    assert not exists(stream.meta_key(alices[0].channel))
    assert exists(stream.log_key(bobs.channel))  # another user's are not touched
    # a client of an evicted run is told to reload from the database, which has all of it
    with pytest.raises(EventDoesNotExist):
        stream.StreamStorage().get_events(alices[0].channel, 1)


def test_a_users_stream_slots_free_themselves_when_not_renewed(settings):
    """A web process that dies frees nothing: its streams' slots lapse instead."""
    settings.SSE_MAX_STREAMS_PER_USER = 2
    settings.SSE_KEEPALIVE_SECONDS = 0.2  # a slot lasts three keep-alive periods unrenewed
    user = uuid.uuid4().int
    kept, lost = stream.stream_slot_take(user), stream.stream_slot_take(user)
    assert kept and lost
    assert stream.stream_slot_take(user) is None
    deadline = time.monotonic() + 0.9
    while time.monotonic() < deadline:
        stream.stream_slot_renew(user, kept)
        time.sleep(0.1)
    third = stream.stream_slot_take(user)  # `lost` has lapsed, `kept` has not
    assert third
    assert stream.stream_slot_take(user) is None
    stream.stream_slot_free(user, kept)
    assert stream.stream_slot_take(user)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_it_caps_the_streams_one_user_has_open(live, live_api, alice, bob, settings):
    cap = settings.SSE_MAX_STREAMS_PER_USER  # the live web process has the default too
    run_id = start(live, live_api, new_thread(alice, words=2000, delay_ms=50))
    bobs_api = bearer(bob)
    bobs_run = start(live, bobs_api, new_thread(bob, words=2000, delay_ms=50))
    streams = []
    try:
        streams += [OpenStream(live.base_url, run_id, live_api) for _ in range(cap)]
        assert [s.status for s in streams] == [200] * cap
        refused = OpenStream(live.base_url, run_id, live_api)
        assert refused.status == 429
        assert refused.json()["code"] == "too_many_streams"
        refused.close()
        # another user is not held back by alice's streams
        streams.append(OpenStream(live.base_url, bobs_run, bobs_api))
        assert streams[-1].status == 200
        began = time.monotonic()
        assert httpx.get(f"{live.base_url}/api/threads/", headers=bobs_api).status_code == 200
        took = time.monotonic() - began
        assert took < 1
        print(f"bob's GET /api/threads/ with alice at {cap} streams: {took * 1000:.0f} ms")
        # a stream that ends gives its slot back
        streams.pop(0).close()

        def reopened():
            again = OpenStream(live.base_url, run_id, live_api)
            if again.status == 200:
                return again
            again.close()

        streams.append(wait_for(reopened, timeout=10, message="a freed slot"))
    finally:
        for opened in streams:
            opened.close()
        for run, api in ((run_id, live_api), (bobs_run, bobs_api)):
            httpx.post(f"{live.base_url}/api/runs/{run}/stop/", headers=api)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_open_stream_keeps_its_slot_and_frees_it_when_it_ends(alice, tmp_path):
    live = start_live(tmp_path, SSE_KEEPALIVE_SECONDS="0.2")  # a slot lapses in 0.6 s unrenewed
    api = bearer(alice)
    run_id = start(live, api, new_thread(alice, words=2000, delay_ms=50))
    slots = f"relay:streams:{alice.pk}"
    r = stream.client()
    try:
        opened = OpenStream(live.base_url, run_id, api)
        assert opened.status == 200
        time.sleep(2)  # a stream that lives on renews its slot
        now_ms = r.time()[0] * 1000
        assert [score > now_ms for _, score in r.zrange(slots, 0, -1, withscores=True)] == [True]
        opened.close()
        wait_for(lambda: not r.exists(slots), timeout=5, message="the slot to be freed")
    finally:
        httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=api)
        live.stop_all()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_client_that_leaves_mid_delivery_frees_its_slot_at_once(live, live_api, alice):
    # deltas every few milliseconds: the client leaves while the stream is sending, not waiting
    run_id = start(live, live_api, new_thread(alice, words=100_000, delay_ms=1))
    slots, r = f"relay:streams:{alice.pk}", stream.client()
    try:
        for _ in range(5):
            opened = OpenStream(live.base_url, run_id, live_api)
            assert opened.status == 200
            time.sleep(0.3)
            opened.close()
            # not lapsed (that takes three keep-alive periods, 45 s): freed
            wait_for(lambda: not r.zcard(slots), timeout=3, message="the slot to be freed")
    finally:
        httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_last_event_id_out_of_range(live, live_api, alice):
    run_id = start(live, live_api, new_thread(alice, words=2000, delay_ms=50))
    url = f"{live.base_url}/api/runs/{run_id}/events/"
    try:
        for last in (f"run-{run_id}:{2**64}", f"run-{run_id}:{2**63}", "9" * 5000):
            for request in (
                {"params": {"lastEventId": last}},
                {"headers": {"Last-Event-ID": last}},
            ):
                headers = {**live_api, **request.get("headers", {})}
                r = httpx.get(url, headers=headers, params=request.get("params"), timeout=10)
                assert r.status_code == 400, (last[:40], r.text[:200])
                assert "Last-Event-ID" in r.json()["detail"]
                assert r.json()["code"] == "invalid_last_event_id"
    finally:
        httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_one_users_big_runs_keep_at_most_the_bound_in_redis(live, alice, settings):
    """The issue's case: 30 runs of a 100,000-word reply (about 1.4 MB of events each, 50 MB
    in all before the cap) keep at most RUN_EVENTS_RETAINED_PER_USER logs of RUN_EVENTS_MAX_BYTES
    once they have ended (the live processes have the default settings, as this one)."""
    with override_settings(RUN_MAX_ACTIVE_PER_USER=30):
        runs = [
            services.agent_start(user=alice, thread=new_thread(alice, 100_000), message="Go").pk
            for _ in range(30)
        ]
    ended = Run.objects.filter(pk__in=runs, status=Run.Status.COMPLETED)
    wait_for(lambda: ended.count() == 30, timeout=120, message="the 30 runs to complete")
    r = stream.client()

    def kept():  # a run's log is retained just after its row says it ended
        logs = [stream.log_key(f"run-{run}") for run in runs]
        logs = [key for key in logs if r.exists(key)]
        return logs if len(logs) <= settings.RUN_EVENTS_RETAINED_PER_USER else None

    logs = wait_for(kept, timeout=10, message="the ended runs' logs to be retained")
    assert len(logs) == settings.RUN_EVENTS_RETAINED_PER_USER
    held = sum(r.memory_usage(key, samples=0) for key in logs)
    # Redis spends about 1.2-1.3 bytes of memory per byte of events kept
    assert held < 1.4 * settings.RUN_EVENTS_MAX_BYTES * settings.RUN_EVENTS_RETAINED_PER_USER
    print(f"30 runs of alice's keep {len(logs)} logs: {held / 2**20:.1f} MiB of Redis")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_ended_run_whose_log_expired_gets_a_lone_stream_reset(live, live_api, alice):
    run_id = start(live, live_api, new_thread(alice, words=3))
    wait_for(lambda: Run.objects.get(pk=run_id).status in Run.TERMINAL, message="the run to end")
    channel = f"run-{run_id}"  # dropped, as the retention window or the per-user cap drop it:
    stream.client().delete(stream.log_key(channel), stream.meta_key(channel))
    r = httpx.get(f"{live.base_url}/api/runs/{run_id}/events/", headers=live_api, timeout=10)
    assert r.status_code == 200, r.text[:300]
    assert "event: stream-reset" in r.text
