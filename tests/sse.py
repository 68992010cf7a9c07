"""A small SSE client for the tests: real HTTP to the live web process."""

import http.client
import json
import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from runs.models import Message, Run


@dataclass
class Event:
    id: str | None
    type: str
    data: str

    @property
    def json(self):
        return json.loads(self.data)

    @property
    def number(self):
        return int(self.id.rsplit(":", 1)[1])

    @property
    def is_terminal(self):
        return self.type == "run.status" and self.json["status"] in Run.TERMINAL


def parse(lines):
    """SSE events from an iterator of lines (comments and the empty stream-open skipped)."""
    fields, data = {}, []
    for line in lines:
        if line == "":
            if data or fields:
                yield Event(fields.get("id"), fields.get("event", "message"), "\n".join(data))
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


class Settled(Exception):
    """The server answered 204: the client has every event of the ended run (after a reset to
    its last one, it reloads the run from the database)."""


def events(
    base_url, run_id, headers, last_event_id=None, timeout=30, client=httpx, deadline=math.inf
):
    """The events of a run's stream as they arrive, until the server ends it; the connection
    closes when the caller stops iterating. `client`: an httpx.Client to share connections
    (the httpx module makes a client per call). `deadline` (a time.monotonic() value) bounds a
    stream that hangs: its keep-alives keep the read timeout from doing so."""
    headers = dict(headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    url = f"{base_url}/api/runs/{run_id}/events/"
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code == 204:
            raise Settled(run_id)
        assert response.status_code == 200, response.read()
        for event in parse(_until(deadline, response.iter_lines(), run_id)):
            if event.type != "stream-open":
                yield event


class OpenStream:
    """A run's stream opened and left open, unread: `status` is the answer's; close() drops the
    connection, as a client that goes away does."""

    def __init__(self, base_url, run_id, headers, timeout=10):
        url = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.connection.request("GET", f"/api/runs/{run_id}/events/", headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def json(self):
        return json.loads(self.response.read())

    def close(self):
        self.response.close()
        self.connection.close()


def _until(deadline, lines, run_id):
    for line in lines:
        assert time.monotonic() < deadline, (
            f"run {run_id}: the stream is still open at the deadline"
        )
        yield line


def follow(base_url, run_id, headers, last_event_id=None, until=None, timeout=30, client=httpx):
    """The events of a run's stream until the server ends it, or until `until(event)` is true
    (then the connection is dropped, as a browser losing its network would). A benchmark
    passes its own httpx.Client: making one per request costs milliseconds."""
    received = []
    for event in events(base_url, run_id, headers, last_event_id, timeout, client):
        received.append(event)
        if until and until(event):
            break
    return received


def follow_resuming(base_url, run_id, headers, deadline, drop=None, client=httpx, received=()):
    """The events of a run up to its terminal one, as a client gets them that reconnects with
    Last-Event-ID whenever its connection breaks: the server went away, or `drop(event)` said
    the client drops it after that event; or until the server says the client has it all
    (204, after a reset to the ended run's last event). Fails at `deadline` (a time.monotonic()
    value). `received`: the events the client already had, from an earlier connection; they
    start the list returned."""
    received = list(received)
    while not (received and received[-1].is_terminal):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"run {run_id}: no terminal event in time, {len(received)} events"
        last = received[-1].id if received else None
        try:
            for event in events(base_url, run_id, headers, last, 30, client, deadline):
                received.append(event)
                if drop and drop(event):
                    break
        except httpx.TransportError:
            time.sleep(0.05)  # the server is away: try again until the deadline
        except Settled:
            break
    return received


def text_of(events, message_id=None):
    """The assistant text reassembled from message.delta events."""
    return "".join(
        e.json["text"]
        for e in events
        if e.type == "message.delta" and message_id in (None, e.json["message"])
    )


def assert_consecutive(events, first=1):
    assert [e.number for e in events] == list(range(first, first + len(events)))


def assert_transcript(events, run_id):
    """A client's whole stream of a run agrees with the database: ids 1, 2, 3... with no gap
    or repeat, the run's status last, and the messages and reassembled text as saved."""
    assert_consecutive(events)
    assert events[-1].json["status"] == Run.objects.get(pk=run_id).status
    saved = Message.objects.filter(run_id=run_id).exclude(role=Message.Role.USER)
    done = [e.json["message"] for e in events if e.type == "message.done"]
    assert [(m["id"], m["content"]) for m in done] == [(m.id, m.content) for m in saved]
    replies = saved.filter(role=Message.Role.ASSISTANT)
    assert text_of(events) == "".join(m.content for m in replies)


def assert_no_silent_gap(events, run_id):
    """A client's whole stream of a run has no gap it was not told of: either the exact
    transcript, or ids consecutive from 1 up to a `stream-reset` (which makes a client reload
    the run from the database) and from the reset's id on after it; the run's status last, or
    a reset that leaves nothing to read of an ended run (the database has all of it)."""
    resets = [i for i, e in enumerate(events) if e.type == "stream-reset"]
    if not resets:
        assert_transcript(events, run_id)
        return
    assert_consecutive(events[: resets[0]])
    for start, end in zip(resets, [*resets[1:], len(events)], strict=True):
        assert_consecutive(events[start + 1 : end], first=events[start].number + 1)
    run = Run.objects.get(pk=run_id)
    if events[-1].type == "stream-reset":
        assert run.status in Run.TERMINAL, f"run {run_id}: a reset ends the stream of a {run}"
    else:
        assert events[-1].json["status"] == run.status
