"""A redis-server of the tests' own, on a free port, keeping nothing on disk: the test session
runs on one (so any number of sessions, and a developer's `make run`, can share a machine), and
the fault tests restart theirs to find it empty, as Redis without persistence comes back."""

import ctypes
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from live import free_port

PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent():
    # The server gets SIGTERM when the thread that started it ends, the test process killed by
    # SIGKILL included, so a killed session leaves no redis-server behind. (Start it from the
    # main thread: the signal follows the thread, not the process.)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServer:
    dies_with_parent = _prctl is not None

    def __init__(self, directory=None, persist=False):
        """With `persist`, an append-only file synced every second, as deploy/redis.conf has
        it: a SIGKILL loses the last second's writes."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run `bin/services redis` (or make)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(directory or tempfile.mkdtemp(prefix="relay-redis-"))
        self.log = self.dir / "redis.log"
        self.persist = persist
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *self._disk(), "--dir", str(self.dir), "--logfile", str(self.log)],
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while not _answers(client):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start: {self.log}")
            time.sleep(0.05)

    def _disk(self):
        if self.persist:
            return ["--appendonly", "yes", "--appendfsync", "everysec"]
        return ["--appendonly", "no"]

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def _answers(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False
