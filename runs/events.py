"""The run event stream over SSE, /api/runs/<id>/events/, and a thread's, which tells its pages
of the runs that start on it (`thread_events`).

The events come from django-eventstream (through runs/eventstream.py, the one module that
uses its internals): its storage interface (our Redis Streams log), its listener manager fed
by Redis pub/sub for live delivery, its SSE encoding. The loop that feeds a connection is
ours, because the library's resends events and lets ids go backwards when a reconnect meets
live traffic. Here a connection writes event n only right after n-1: a live event that does
not follow on sends the loop back to the log (`_from_log`, which GRIP mode reads too), and an
id already written is dropped.

The view is async and reads the database and the log through the shared executor, so an open
stream holds no thread and no database connection while it waits (config/asgi.py keeps
Django's handler from giving it a thread of its own). In GRIP mode a request that came through
Pushpin is answered at once (`_held`) and Pushpin holds the connection: runs/grip.py.
"""

import asyncio
import contextlib
import json
import logging
import time

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.settings import api_settings

from . import eventstream, grip, stream
from .eventstream import EventDoesNotExist, sse_encode_event
from .models import Run, Thread
from .stream import StreamStorage, is_terminal

log = logging.getLogger(__name__)

READ_LIMIT = 100
MAX_EVENT_ID = 2**63 - 1
OPENING = ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"  # padding flushes proxies


@require_GET
async def run_events(request, run_id):
    channel = f"run-{run_id}"
    proxied = grip.proxied(request)  # verifies Pushpin's signature: once a request
    recovery = proxied and "Grip-Last" in request.headers  # Pushpin, for a stream it holds
    try:
        last_id = last_event_id(request, channel, recovery)
    except ValueError as exc:
        return JsonResponse({"detail": str(exc), "code": "invalid_last_event_id"}, status=400)
    try:
        if recovery:  # carries no client credentials, but the run's signed link
            if not grip.granted(request, channel):
                return _not_found()
        else:
            opened = sync_to_async(_open, thread_sensitive=False)
            outcome = await opened(request, run_id, last_id, counted=not proxied)
            if isinstance(outcome, HttpResponseBase):  # a lone stream-reset is a streaming one
                return outcome
        if proxied:
            held = sync_to_async(_held, thread_sensitive=False)
            return await held(request, channel, last_id, continued=recovery)
    except redis.RedisError:
        return JsonResponse(
            {"detail": "The event stream is unavailable; retry shortly."}, status=503
        )
    user_id, slot = outcome
    return event_stream(_stream(channel, last_id, user_id=user_id, slot=slot))


class EventStreamResponse(StreamingHttpResponse):
    """Django's handler closes the iterator it takes from __aiter__, but Django's __aiter__ does
    not close the one it wraps: a client that left mid-stream would leave the stream (its
    listener, its slot among the user's open streams) to the garbage collector, whenever that
    comes. This one closes it."""

    async def __aiter__(self):
        async with contextlib.aclosing(self._iterator) as events:
            async for part in events:
                yield self.make_bytes(part)


def event_stream(events):
    response = EventStreamResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx must not buffer the stream
    return response


def last_event_id(request, channel, recovery=False):
    """The last event the client has, from the Last-Event-ID header or ?lastEventId= (or, from
    Pushpin recovering a held stream, Grip-Last). With none, 0: the whole run, so a client that
    connects just after starting a run misses nothing."""
    if recovery:
        name, _, last = request.headers["Grip-Last"].partition(";")
        raw = f"{name.strip()}:{last.strip().removeprefix('last-id=')}"
    else:
        raw = request.headers.get("Last-Event-ID") or request.GET.get("lastEventId") or ""
    if not raw:
        return 0
    name, _, number = raw.rpartition(":")
    if name not in ("", channel) or not (number.isascii() and number.isdigit()):
        raise ValueError(f"Last-Event-ID must be {channel}:<number>, not {raw[:200]!r}.")
    # Redis takes stream ids below 2^64; ours stay below 2^53 (runs/stream.py)
    if len(number) > 19 or int(number) > MAX_EVENT_ID:
        raise ValueError(f"Last-Event-ID's number must be at most {MAX_EVENT_ID}.")
    return int(number)


def _open(request, run_id, last_id, *, counted):
    """Authorize the request and decide what to answer. Returns a response, or the user's id
    and, when `counted` (the web process holds the stream), its slot among the user's open
    streams, when the stream should open."""
    try:
        user = _user_or_refusal(request)
        if isinstance(user, HttpResponseBase):
            return user
        status = Run.objects.filter(pk=run_id, owner=user).values_list("status", flat=True).first()
        if status is None:
            return _not_found()
        user_id = user.pk
    finally:
        connection.close()
    settled = _settled(f"run-{run_id}", last_id, status)
    if settled or not counted:
        return settled or (user_id, None)
    return _slot_or_refusal(user_id)


def _user_or_refusal(request):
    """The authenticated user, or the response refusing the request (401, or 429 for too many
    failed authentications)."""
    try:
        user = authenticated_user(request)
    except APIException as exc:  # a wrong key (401), or too many of them (429)
        return JsonResponse({"detail": str(exc.detail)}, status=exc.status_code)
    if not user.is_authenticated:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=401)
    return user


def _slot_or_refusal(user_id):
    """The user's id and a slot among their open streams, or 429 at SSE_MAX_STREAMS_PER_USER."""
    slot = stream.stream_slot_take(user_id)
    if slot is None:
        cap = settings.SSE_MAX_STREAMS_PER_USER
        return JsonResponse(
            {"detail": f"You have {cap} event streams open, the most allowed; close one first.",
             "code": "too_many_streams"},
            status=429,
        )  # fmt: skip
    return user_id, slot


def authenticated_user(request):
    """The user the request authenticates as, by the API's own authentication classes (an API
    key, or the session): this view is not a DRF view, but accepts what the API accepts."""
    authenticators = [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    return Request(request, authenticators=authenticators).user


def _not_found():
    return JsonResponse({"detail": "Not found."}, status=404)


def _settled(channel, last_id, status):
    """A response for a client with nothing left to receive: 204 (an EventSource then stops
    reconnecting) once it has the terminal event; a lone stream-reset when the run has ended
    and its log has expired."""
    if status not in Run.TERMINAL:
        return None
    newest = StreamStorage().newest(channel)
    if newest is None:
        return event_stream(_gone(channel))
    if last_id >= newest.id and is_terminal(newest):
        return HttpResponse(status=204)
    return None


def _read(channel, last_id):
    """Events after `last_id` from the log. When `last_id` is no longer in it: no events, the
    id to reset to, and whether the log already ends with the run's terminal event."""
    storage = StreamStorage()
    try:
        return storage.get_events(channel, last_id, limit=READ_LIMIT), None, False
    except EventDoesNotExist as exc:
        newest = storage.newest(channel)
        return [], exc.current_id, newest is not None and is_terminal(newest)


def _from_log(channel, last_id):
    """The stream from the log after `last_id`, read by pages: (text, last id, whether the
    stream ends with it) for each, the last one the first that is not full. A reset that
    leaves nothing to read ends the stream: the client reloads from the database, which has
    all of an ended run."""
    while True:
        events, reset_to, ended = _read(channel, last_id)
        if reset_to is not None:
            yield _reset(channel, reset_to), reset_to, ended or reset_to == 0
            last_id = reset_to
            continue
        text, last_id, done = _encode(channel, last_id, events)
        yield text, last_id, done
        if len(events) < READ_LIMIT:
            return


def _held(request, channel, last_id, *, continued):
    """GRIP mode: the events the client lacks now, then Pushpin holds the connection and
    delivers the rest as they are published. Once the run's terminal event is in the body, the
    response is not held: the stream ends as in the direct mode."""
    body = [] if continued else [OPENING]  # a recovery's answer continues the stream
    pages = _from_log(channel, last_id)
    for text, last_id, end in pages:  # noqa: B007 (the last page's last_id is the stream's)
        body.append(text)
        if end:
            return event_response("".join(body))
    if not text:  # nothing new: Pushpin may already have the terminal event, and missed the close
        newest = StreamStorage().newest(channel)
        if newest is not None and is_terminal(newest) and last_id >= newest.id:
            return event_response("".join(body))
    response = event_response("".join(body))
    for header, value in grip.hold_headers(request, channel, last_id).items():
        response[header] = value
    return response


def event_response(body):
    response = HttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


def _reset(channel, current_id):
    return sse_encode_event(
        "stream-reset",
        {"channels": [channel]},
        event_id=f"{channel}:{current_id}",
        json_encode=True,
    )


async def _gone(channel):
    yield OPENING + _reset(channel, 0)


async def _stream(channel, last_id, *, user_id, slot):
    next_page = sync_to_async(next, thread_sensitive=False)
    slot = HeldSlot(user_id, slot)
    try:
        # Listen before the first read, so nothing published in between is missed: a process'
        # first streams also wait for its pub/sub listener to have subscribed.
        with eventstream.subscribe(channel, user_id) as live:
            await live.listening(settings.SSE_KEEPALIVE_SECONDS)
            yield OPENING
            from_log = True
            while True:
                if from_log:
                    pages = _from_log(channel, last_id)
                    while page := await next_page(pages, None):
                        body, last_id, end = page
                        if body:
                            yield body
                        if end:
                            return
                queued, from_log = live.take()  # from_log: events were missed, read them back
                fresh = [e for e in queued if int(e.id) > last_id]
                following = fresh[: _run_length(fresh, last_id)]
                from_log = from_log or len(following) < len(fresh)
                body, last_id, done = _encode(channel, last_id, following)
                if body:
                    yield body
                if done:
                    return
                if from_log:
                    continue
                if not await slot.wait(live):
                    yield ": keep-alive\n\n"
    finally:
        slot.free()


@require_GET
async def thread_events(request, thread_id):
    """A thread's stream: /api/threads/<id>/events/. It tells the thread's pages which run is
    active when it opens, then each run that starts on the thread (`run.started`), so a page
    follows a run started elsewhere (another tab, the API, a schedule) without polling. It has
    no log and no ids: what a client missed while away is the thread's active run, which the
    stream tells again at each connection. The web processes hold it in GRIP mode too (nginx
    sends it to them, not to Pushpin: deploy/nginx/relay.conf), so it always takes a slot."""
    opened = sync_to_async(_open_thread, thread_sensitive=False)
    try:
        outcome = await opened(request, thread_id)
    except redis.RedisError:
        return JsonResponse(
            {"detail": "The event stream is unavailable; retry shortly."}, status=503
        )
    if isinstance(outcome, HttpResponseBase):
        return outcome
    user_id, slot = outcome
    return event_stream(_thread_stream(thread_id, user_id=user_id, slot=slot))


def _open_thread(request, thread_id):
    try:
        user = _user_or_refusal(request)
        if isinstance(user, HttpResponseBase):
            return user
        if not Thread.objects.filter(pk=thread_id, owner=user).exists():
            return _not_found()
        user_id = user.pk
    finally:
        connection.close()
    return _slot_or_refusal(user_id)


def _active_run(thread_id):
    try:
        return Run.objects.active_on(thread_id).values_list("pk", flat=True).first()
    finally:
        connection.close()


def _run_started(thread_id, run_id):
    data = {"run": str(run_id), "thread": thread_id}
    return sse_encode_event("run.started", data, json_encode=True)


async def _thread_stream(thread_id, *, user_id, slot):
    active_run = sync_to_async(_active_run, thread_sensitive=False)
    slot = HeldSlot(user_id, slot)
    try:
        # Listen before reading the active run: a run committed before the read is in the
        # database, one committed after it is announced (on commit) to this subscription.
        with eventstream.subscribe(stream.thread_channel(thread_id), user_id) as live:
            await live.listening(settings.SSE_KEEPALIVE_SECONDS)
            yield OPENING
            told, missed = None, True
            while True:
                if missed:  # at the start, and when the pub/sub connection was lost
                    run_id = await active_run(thread_id)
                    if run_id is not None and str(run_id) != told:
                        told = str(run_id)
                        yield _run_started(thread_id, run_id)
                queued, missed = live.take()
                for event in queued:
                    run_id = json.loads(event.data)["run"]
                    if run_id != told:  # told already by the database
                        told = run_id
                        yield sse_encode_event(event.type, event.data)
                if missed:
                    continue
                if not await slot.wait(live):
                    yield ": keep-alive\n\n"
    finally:
        slot.free()


class HeldSlot:
    """An open stream's slot among its user's (runs/stream.py): renewed while the stream waits,
    freed when it ends."""

    def __init__(self, user_id, slot):
        self.user_id, self.slot = user_id, slot
        self.renew_at = time.monotonic() + settings.SSE_KEEPALIVE_SECONDS

    async def wait(self, live):
        """Renew the slot when it is due, then wait for `live` events: False if none came within
        a keep-alive period (the stream sends one)."""
        if time.monotonic() >= self.renew_at:
            await sync_to_async(_renew, thread_sensitive=False)(self.user_id, self.slot)
            self.renew_at = time.monotonic() + settings.SSE_KEEPALIVE_SECONDS
        return await live.wait(settings.SSE_KEEPALIVE_SECONDS)

    def free(self):
        # in a thread, not awaited: the stream may be ending by cancellation
        asyncio.get_running_loop().run_in_executor(None, _free, self.user_id, self.slot)


def _renew(user_id, slot):
    try:
        stream.stream_slot_renew(user_id, slot)
    except redis.RedisError as exc:  # the slot lapses; the stream itself goes on
        log.warning("could not renew an event stream's slot: %s", exc)


def _free(user_id, slot):
    try:
        stream.stream_slot_free(user_id, slot)
    except redis.RedisError as exc:
        log.warning("could not free an event stream's slot (it lapses): %s", exc)


def _run_length(events, last_id):
    """How many of `events` follow on from `last_id` without a gap."""
    for i, event in enumerate(events):
        if int(event.id) != last_id + 1 + i:
            return i
    return len(events)


def _encode(channel, last_id, events):
    """SSE text for `events`, the new last id, and whether the run's terminal event is in it."""
    body = []
    for event in events:
        body.append(sse_encode_event(event.type, event.data, event_id=f"{channel}:{event.id}"))
        last_id = int(event.id)
        if is_terminal(event):
            return "".join(body), last_id, True
    return "".join(body), last_id, False
