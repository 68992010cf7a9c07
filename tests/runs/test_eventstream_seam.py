"""What runs/eventstream.py relies on in django-eventstream's internals, checked against the
installed version: an upgrade that changes any of it fails here, not in a stream that waits
forever. Each test runs on a Redis of its own, with a listener manager of its own, so the
pub/sub subscribers counted are the test's."""

import asyncio
import gc
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django_eventstream import eventstream as library_eventstream
from django_eventstream import views
from django_eventstream.utils import get_storage

from runs import eventstream, stream
from runs.eventstream import Event, EventDoesNotExist, sse_encode_event

WAIT = 10  # seconds any one wait may take


@pytest.fixture
def channel():
    return f"run-{uuid.uuid4()}"


@pytest.fixture
def manager(own_redis, settings, monkeypatch):
    """A fresh listener manager of the library's, on the test's Redis, with the resilient
    listener installed as AgentsConfig.ready() installs it."""
    settings.EVENTSTREAM_REDIS = {**settings.EVENTSTREAM_REDIS, "port": own_redis.port, "db": 0}
    monkeypatch.setattr(views, "listener_manager", views.ListenerManager())
    eventstream.install_resilient_listener()
    return views.get_listener_manager()


def run(coroutine):
    """asyncio.run in a thread of its own: the browser tests' Playwright keeps an event loop
    running in this one for the session."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coroutine).result(timeout=60)


def append(channel, event_type="run.delta", data='{"text": "h\\u00e9/llo"}'):
    return stream.StreamStorage().append_event(channel, event_type, data, publish=True)


async def until(predicate, message):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT} s waiting for {message}")
        await asyncio.sleep(0.02)


def subscribers():
    return dict(stream.client().pubsub_numsub(eventstream.PUBSUB_CHANNEL))[
        eventstream.PUBSUB_CHANNEL
    ]


async def subscribed():
    await until(lambda: subscribers() == 1, "the listener to subscribe")


async def take_until(live, count):
    """The first `count` events `live` receives."""
    taken = []
    while len(taken) < count:
        assert await live.wait(WAIT), f"{len(taken)} of {count} events came"
        taken += live.take()[0]
    return taken


def test_a_subscription_receives_what_the_append_script_publishes(manager, channel):
    other = f"run-{uuid.uuid4()}"

    async def scenario():
        with eventstream.subscribe(channel, user_id=7) as live:
            await subscribed()
            gc.collect()  # the listener's task is not the garbage collector's
            stream.client().publish(eventstream.PUBSUB_CHANNEL, "not an event")
            append(other)  # another channel's: not this subscription's
            appended = [append(channel), append(channel, "run.status", '{"status": "done"}')]
            received = await take_until(live, 2)
            assert live.take() == ([], False)
            return appended, received

    appended, received = run(scenario())
    assert [(e.channel, e.type, e.data, int(e.id)) for e in received] == [
        (e.channel, e.type, e.data, e.id) for e in appended
    ]


def test_the_library_publishes_the_message_format_the_script_does(manager, channel, monkeypatch):
    """Its own send_event is the reference for the format its listener reads."""
    published = []

    class Recorder:
        def publish(self, name, message):
            published.append((name, message))

    monkeypatch.setattr(library_eventstream, "redis_client", Recorder())
    monkeypatch.setattr(library_eventstream, "publish_event", lambda *a, **k: None)  # GRIP
    library_eventstream.send_event(channel, "run.delta", '{"text": "x"}', json_encode=False)
    [(name, message)] = published
    assert name == eventstream.PUBSUB_CHANNEL
    assert json.loads(message) == dict(
        zip(eventstream.MESSAGE_FIELDS, (channel, "run.delta", '{"text": "x"}', "1"), strict=True)
    )


def test_events_past_the_librarys_queue_are_dropped_and_said_so(manager, channel):
    async def scenario():
        with (
            eventstream.subscribe(channel, user_id=7) as slow,
            eventstream.subscribe(channel, user_id=7) as fast,
        ):
            await subscribed()
            appended = []
            for _ in range(views.MAX_PENDING + 5):
                appended.append(append(channel))
                await take_until(fast, 1)  # the listener has queued it for both
            return appended, slow.take(), slow.take()

    appended, first, second = run(scenario())
    queued, missed = first
    assert [int(e.id) for e in queued] == [e.id for e in appended[: views.MAX_PENDING]]
    assert missed
    assert second == ([], False)


def test_a_subscription_wakes_when_an_event_comes_and_not_before(manager, channel):
    async def scenario():
        with eventstream.subscribe(channel, user_id=7) as live:
            await subscribed()
            idle = await live.wait(0.2)
            append(channel)
            return idle, await live.wait(WAIT)

    assert run(scenario()) == (False, True)


@pytest.mark.parametrize("loss", ["dropped", "restarted"])
def test_the_listener_subscribes_again_and_sends_streams_back_to_the_log(
    manager, channel, own_redis, loss
):
    """A dropped connection redis-py reconnects by itself; a restart ends the library's
    listener."""

    async def scenario():
        with eventstream.subscribe(channel, user_id=7) as live:
            await subscribed()
            if loss == "dropped":
                stream.client().client_kill_filter(_type="pubsub")
            else:
                own_redis.kill()
                await asyncio.sleep(0.5)  # its reconnection fails at least once
                own_redis.start()
            assert await live.wait(WAIT), "the listener did not come back"
            back = live.take()
            await subscribed()
            appended = append(channel)
            return back, appended, await take_until(live, 1)

    back, appended, [received] = run(scenario())
    assert back == ([], True)  # what was published meanwhile is in the log
    assert int(received.id) == appended.id


def test_a_subscription_leaves_the_manager_when_it_ends(manager, channel):
    async def scenario():
        with eventstream.subscribe(channel, user_id=7):
            assert channel in manager.listeners_by_channel
        assert channel not in manager.listeners_by_channel

    run(scenario())


def test_the_resilient_listener_is_installed_once_and_by_the_app(manager):
    # the library still makes a pub/sub listener when EVENTSTREAM_REDIS is set...
    assert type(views.ListenerManager().redis_listener) is views.RedisListener
    installed = manager.redis_listener
    assert isinstance(installed, eventstream.ResilientRedisListener)
    eventstream.install_resilient_listener()
    assert manager.redis_listener is installed


def test_apps_ready_installed_the_resilient_listener():
    manager = views.get_listener_manager()
    assert isinstance(manager.redis_listener, eventstream.ResilientRedisListener)


def test_the_sse_encoding_is_as_clients_read_it():
    assert sse_encode_event("run.delta", '{"a": 1}', event_id="run-1:5") == (
        'event: run.delta\nid: run-1:5\ndata: {"a": 1}\n\n'
    )
    assert sse_encode_event("x", "a\nb") == "event: x\ndata: a\ndata: b\n\n"
    reset = sse_encode_event("stream-reset", {"channels": ["run-1"]}, "run-1:0", json_encode=True)
    assert reset == 'event: stream-reset\nid: run-1:0\ndata: {"channels": ["run-1"]}\n\n'


def test_the_storage_interface_is_as_the_log_implements_it():
    assert isinstance(get_storage(), stream.StreamStorage)  # EVENTSTREAM_STORAGE_CLASS
    assert EventDoesNotExist("gone", 7).current_id == 7
    event = Event("run-1", "run.delta", "{}", id=3)
    assert (event.channel, event.type, event.data, event.id) == ("run-1", "run.delta", "{}", 3)
