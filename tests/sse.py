"""A small SSE client for the tests: real HTTP to the live web process."""

import json
from dataclasses import dataclass

import httpx


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


def follow(base_url, run_id, headers, last_event_id=None, until=None, timeout=30):
    """The events of a run's stream until the server ends it, or until `until(event)` is true
    (then the connection is dropped, as a browser losing its network would)."""
    headers = dict(headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    received = []
    url = f"{base_url}/api/runs/{run_id}/events/"
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        for event in parse(response.iter_lines()):
            if event.type == "stream-open":
                continue
            received.append(event)
            if until and until(event):
                break
    return received


def text_of(events, message_id=None):
    """The assistant text reassembled from message.delta events."""
    return "".join(
        e.json["text"]
        for e in events
        if e.type == "message.delta" and message_id in (None, e.json["message"])
    )
