"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1, answering each POST as
its script says (a status, or "hang": no answer until it is stopped), and keeping what came."""

import dataclasses
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG = "hang"


@dataclasses.dataclass
class Received:
    at: float  # time.time()
    path: str
    headers: dict
    body: bytes
    answer: object


class Receiver:
    """`script`: what to answer each request in turn (a status or HANG); then `then`."""

    def __init__(self, script=(), then=200):
        self.script, self.then = list(script), then
        self.received = []
        self.stopping = threading.Event()
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    answer = receiver.script.pop(0) if receiver.script else receiver.then
                    receiver.received.append(
                        Received(time.time(), self.path, dict(self.headers), body, answer)
                    )
                    receiver._lock.notify_all()
                if answer == HANG:
                    receiver.stopping.wait(60)
                    return
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count, timeout=20):
        """The first `count` requests, once they have come."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {count} requests"
                        f" ({len(self.received)} came)"
                    )
                self._lock.wait(left)
            return list(self.received[:count])

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
