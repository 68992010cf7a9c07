"""A local fake of an OpenAI-compatible chat-completions server, scripted by the tests (and the
server under tests/fakeanthropic.py)."""

import collections
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MALFORMED = "data: {not json"


@contextlib.contextmanager
def unanswered_port():
    """A port whose listener has a full backlog and never accepts: the kernel drops the next
    SYNs, so a connect there waits for its timeout."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued.connect(("127.0.0.1", port))
        yield port


def text(content):
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def tool_call(index, call_id, name, arguments, pieces=3):
    """The chunks of one native tool call: id and name first, then the arguments in pieces."""
    size = max(1, -(-len(arguments) // pieces))
    parts = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    first = {"index": index, "id": call_id, "type": "function", "function": {"name": name}}
    rest = [{"index": index, "function": {"arguments": part}} for part in parts]
    return [
        {"choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]} for delta in [first, *rest]
    ]


def usage(prompt_tokens, completion_tokens):
    return {
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_chunk(message):
    return {"error": {"message": message, "type": "server_error"}}


def error_body(message):
    return {"error": {"message": message, "type": "invalid_request_error"}}


@dataclass
class Reply:
    chunks: list  # dicts are sent as `data: <json>`, (event, dict) pairs with an `event:` line
    # before, strings as raw lines
    status: int = 200
    body: dict | None = None  # sent as a plain JSON body instead of a stream
    delay: float = 0.0  # seconds before each chunk
    hang: bool = False  # after the chunks, hold the connection open until released
    done: bool = True  # end with `data: [DONE]`
    silent: bool = False  # accept the request, then send nothing (not even a status line)
    drop: bool = False  # after the chunks, close the connection without ending the stream
    headers: dict = field(default_factory=dict)  # sent with the answer, e.g. Retry-After


@dataclass
class Request:
    path: str
    headers: object  # http.client.HTTPMessage: .get() ignores case
    body: dict = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)  # when it came in


class FakeLLM:
    def __init__(self):
        self.requests = []
        self.release = threading.Event()  # ends every hanging reply
        self._replies = collections.deque()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        host, port = self._server.server_address[:2]
        self.origin = f"http://{host}:{port}"
        self.base_url = f"{self.origin}/v1"
        # A short poll interval: shutdown() waits for the next poll, once per test.
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def script(
        self,
        chunks=(),
        *,
        status=200,
        body=None,
        delay=0.0,
        hang=False,
        done=True,
        silent=False,
        drop=False,
        headers=None,
    ):
        """Queue the reply to the next request."""
        reply = Reply(list(chunks), status, body, delay, hang, done, silent, drop, headers or {})
        self._replies.append(reply)

    def fail(self, status, message, headers=None):
        self.script(status=status, body=error_body(message), headers=headers)

    def close(self):
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _next_reply(self):
        if self._replies:
            return self._replies.popleft()
        return Reply([], status=500, body=self.unscripted())

    def unscripted(self):
        return error_body("FakeLLM: no reply scripted")


def _handler_for(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # for chunked transfer, as real servers stream

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            fake.requests.append(Request(self.path, self.headers, json.loads(raw or b"{}")))
            reply = fake._next_reply()
            self.close_connection = True
            if reply.silent:
                fake.release.wait()
            elif reply.body is not None:
                self._send_json(reply)
            else:
                self._send_stream(reply)

        def _send_json(self, reply):
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, reply):
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._send_chunk(": keep-alive comment\n\n")
                for chunk in reply.chunks:
                    time.sleep(reply.delay)
                    self._send_chunk(_event(chunk) + "\n\n")
                if reply.hang:
                    fake.release.wait()
                    return
                if reply.drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if reply.done:
                    self._send_chunk("data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client went away (a stopped stream): nothing more to send

        def _send_chunk(self, data):
            data = data.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def log_message(self, format, *args):
            pass  # keep test output clean

    return Handler


def _event(chunk):
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, tuple):
        name, data = chunk
        return f"event: {name}\ndata: {json.dumps(data)}"
    return f"data: {json.dumps(chunk)}"
