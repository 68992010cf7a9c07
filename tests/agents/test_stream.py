"""The Redis Streams event log behind django-eventstream."""

import threading
import uuid

import pytest
from django_eventstream.storage import EventDoesNotExist

from agents import stream


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


def test_it_keeps_a_finished_runs_log_for_the_retention_window(storage, settings):
    run_id = uuid.uuid4()
    stream.emit(run_id, "run.status", status="queued", error="")
    key = stream.log_key(f"run-{run_id}")
    assert stream.client().ttl(key) > settings.RUN_EVENTS_RETENTION
    stream.retain(run_id)
    assert 0 < stream.client().ttl(key) <= settings.RUN_EVENTS_RETENTION


def test_it_raises_and_reads_stop_flags():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    stream.request_stop(a)
    assert stream.stop_flags([a, b]) == {a}
