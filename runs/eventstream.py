"""Relay's one seam with django-eventstream (the version range in pyproject.toml is the one
tests/runs/test_eventstream_seam.py checks). Beyond the documented storage interface the
library has no API for what the event stream needs, so the parts of its internals Relay uses
are all here:

- its storage interface (StorageBase, Event, EventDoesNotExist) and its SSE encoding;
- its pub/sub message format: the channel its Redis listener subscribes to and the fields of
  a message, which runs/stream.py's append script publishes (the script takes them as
  arguments, so they are named only here);
- its listener manager, through `subscribe`: a connection's live events, in batches, with
  whether some were dropped and the wake-up when more come, and whether the process' pub/sub
  listener has subscribed yet;
- its listener manager's pub/sub listener, replaced by `ResilientRedisListener` (from
  AgentsConfig.ready()), which reads that format.
"""

import asyncio
import contextlib
import json
import logging
import time

import redis
import redis.asyncio
from django.conf import settings
from django_eventstream import views
from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist, StorageBase
from django_eventstream.utils import sse_encode_event

__all__ = ["Event", "EventDoesNotExist", "StorageBase", "sse_encode_event"]

log = logging.getLogger(__name__)

# The library's pub/sub message (eventstream.send_event publishes it, views.RedisListener reads
# it; ours reads the same, so either listener reads what the other side sends): on this
# channel, a JSON object with these fields, in this order: the event's channel, type, data and
# id.
PUBSUB_CHANNEL = "events_channel"
MESSAGE_FIELDS = ("channel", "event_type", "data", "pub_id")


class Subscription:
    """A connection's live events on one channel, queued by the library's listener manager
    (at most views.MAX_PENDING of them between two `take`s; past that it drops them and says
    so, and the events must be read back from the log)."""

    def __init__(self, channel, listener):
        self.channel = channel
        self._listener = listener

    def take(self):
        """The events queued since the last take, and whether the stream must go back to the
        log for some: the library dropped them, or the pub/sub connection was lost."""
        with views.get_listener_manager().lock:
            queued = self._listener.channel_items.pop(self.channel, [])
            missed = self._listener.overflow
            self._listener.overflow = False
            self._listener.aevent.clear()
        return queued, missed

    async def listening(self, timeout):
        """Wait (up to `timeout` seconds) until the process' pub/sub listener has subscribed,
        so that what is published from then on reaches this subscription. Only a process'
        first subscriptions wait: the listener connects once the first one has started it. (A
        later loss of the connection is said by `take`.)"""
        listener = views.get_listener_manager().redis_listener
        deadline = time.monotonic() + timeout
        while not getattr(listener, "subscribed", True) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def wait(self, timeout):
        """Whether there is something to take before `timeout` seconds are up."""
        try:
            await asyncio.wait_for(self._listener.aevent.wait(), timeout)
        except TimeoutError:
            return False
        return True


@contextlib.contextmanager
def subscribe(channel, user_id):
    """Listen to `channel` for a connection of `user_id`'s, from within its event loop (the
    library wakes the listener on that loop). The first subscription of a process starts the
    process' pub/sub listener."""
    listener = views.Listener()
    listener.user_id = user_id
    listener.channels = {channel}
    listener.assign_loop()
    manager = views.get_listener_manager()
    manager.add_listener(listener)
    try:
        yield Subscription(channel, listener)
    finally:
        manager.remove_listener(listener)


class ResilientRedisListener:
    """The process' pub/sub listener, in place of django-eventstream's (views.RedisListener),
    which ends with its connection: with redis-py 6, a Redis restart ends it for good, and
    every open stream waits forever. This one subscribes again. And when the subscription comes
    back (its own, or redis-py's, which reconnects a dropped connection by itself and says so
    only with a new subscribe confirmation), it sends every open stream back to the log for
    what was published in between.

    The library's listener manager starts it at its first listener. It connects then, not when
    made: made in AppConfig.ready(), it would take the settings of then, and the test session
    points EVENTSTREAM_REDIS at its own Redis later."""

    subscribed = False

    async def start(self):
        # The manager keeps no reference to the task it starts this in, and asyncio only a weak
        # one: without these, the task (and the process' live delivery) would go to the garbage
        # collector while it waits for a message.
        self.task = asyncio.current_task()
        self.client = redis.asyncio.Redis(**settings.EVENTSTREAM_REDIS)
        while True:
            try:
                self.pubsub = self.client.pubsub()
                await self.pubsub.subscribe(PUBSUB_CHANNEL)
                await self.listen()
            except (redis.RedisError, OSError) as exc:
                log.warning("the event listener lost Redis, reconnecting: %s", exc)
            await asyncio.sleep(1)

    async def listen(self):
        async for message in self.pubsub.listen():
            if message["type"] == "subscribe":
                if self.subscribed:
                    _back_to_log()
                self.subscribed = True
            elif message["type"] == "message":
                try:
                    fields = json.loads(message["data"])
                    channel, event_type, data, event_id = (fields[f] for f in MESSAGE_FIELDS)
                except (ValueError, TypeError, KeyError):  # one bad message must not end it
                    log.warning("not an event on %s: %.200r", PUBSUB_CHANNEL, message["data"])
                    continue
                event = Event(channel, event_type, data, id=event_id)
                views.get_listener_manager().add_to_queues(channel, event)


def _back_to_log():
    manager = views.get_listener_manager()
    with manager.lock:
        listeners = set().union(*manager.listeners_by_channel.values())
        for listener in listeners:
            listener.overflow = True
            listener.wake_threadsafe()


def install_resilient_listener():
    """Replace the process' pub/sub listener (the library makes one when EVENTSTREAM_REDIS is
    set) before any stream starts it."""
    manager = views.get_listener_manager()
    if manager.redis_listener and not isinstance(manager.redis_listener, ResilientRedisListener):
        manager.redis_listener = ResilientRedisListener()
