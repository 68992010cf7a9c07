"""A light asyncio HTTP and SSE client for the benchmarks: thousands of streams, or hundreds of
requests a second, from one Python process without it becoming the bottleneck (httpx costs
about a millisecond of CPU per request). HTTP/1.0, one connection per request: no chunked
framing to undo, and loopback connections are cheap."""

import asyncio
import json
import time


def encode_request(method, host, path, headers, body=None):
    lines = [
        f"{method} {path} HTTP/1.0",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body is not None:
        body = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def request(address, method, path, headers, body=None):
    """(status, parsed JSON body or None)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(encode_request(method, address[0], path, headers, body))
        response = await reader.read()
    finally:
        writer.close()
    head, _, content = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(content) if content.startswith((b"{", b"[")) else None


def parse(block):
    """(id, type, data) of one SSE block; id None for comments and id-less events."""
    fields = {}
    for line in block.decode().split("\n"):
        if line and line[0] != ":":
            name, _, value = line.partition(": ")
            fields[name] = value
    event_id = fields.get("id")
    return (
        (int(event_id.rsplit(":", 1)[1]) if event_id else None),
        fields.get("event"),
        fields.get("data"),
    )


class Stream:
    """One SSE connection. `on_event(id, type, data, received_at)` is called for each event
    with an id, and returning True ends the stream; `opened` resolves on stream-open."""

    def __init__(self, address, path, headers, on_event):
        self.address = address
        self.request = encode_request("GET", address[0], path, headers)
        self.on_event = on_event
        self.opened = asyncio.get_running_loop().create_future()
        self.error = None

    async def run(self):
        try:
            reader, writer = await asyncio.open_connection(*self.address)
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            buffer = b""
            while chunk := await reader.read(65536):
                now = time.time()
                *blocks, buffer = (buffer + chunk).split(b"\n\n")
                for block in blocks:
                    event_id, event_type, data = parse(block)
                    if event_type == "stream-open" and not self.opened.done():
                        self.opened.set_result(True)
                    elif event_id is not None and self.on_event(event_id, event_type, data, now):
                        writer.close()
                        return
        except Exception as exc:  # reported, not raised: one client must not end the benchmark
            self.error = exc
        finally:
            if not self.opened.done():
                self.opened.set_result(False)
