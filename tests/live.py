"""Real web (uvicorn), worker and beat processes on this process's database and Redis, for the
end-to-end tests and the benchmarks."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def database_url():
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    return f"postgresql://{s['USER']}:{s['PASSWORD']}@{host}/{s['NAME']}"


class Live:
    """Real web (uvicorn), worker and beat processes on the test database and Redis."""

    def __init__(self, tmp, **env):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOG_LEVEL": "WARNING", **env, "DATABASE_URL": database_url()}
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the browser tests' concession, not theirs
        self.logs = tmp
        self.processes = {}

    def start(self, name, *args, env=None):
        """`env`: variables for this process only, over the others'."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env={**self.env, **(env or {})},
            stdout=log, stderr=log,
        )  # fmt: skip
        return self.processes[name]

    def start_web(self, processes=1):
        self.start(
            "web",
            "uvicorn",
            "config.asgi:application",
            "--port",
            str(self.port),
            "--workers",
            str(processes),
            "--log-level",
            "warning",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the web process did not start: see {self.logs / 'web.log'}")

    def start_worker(self, name="worker", env=None, queues="runs,default"):
        return self.start(name, "celery", "-A", "config", "worker", "-Q", queues,
                          "-n", f"{name}-{os.getpid()}@%h", "-l", "warning", env=env)  # fmt: skip

    def start_beat(self):
        return self.start("beat", "celery", "-A", "config", "beat", "-l", "warning",
                          "--pidfile=", "-s", str(self.logs / "beat-schedule"))  # fmt: skip

    def stop(self, name, sig=None):
        process = self.processes.pop(name)
        if sig:
            process.send_signal(sig)
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self):
        for name in list(self.processes):
            self.stop(name)
