import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents import stream
from agents.models import Run

ROOT = Path(__file__).resolve().parent.parent

# Short leases so a killed worker's run is reaped within seconds, not the production minute.
LIVE_ENV = {
    "RUN_LEASE_SECONDS": "3",
    "RUN_HEARTBEAT_SECONDS": "1",
    "RUN_REAPER_SECONDS": "1",
    "WORKER_CONCURRENCY": "80",
    "LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """The tests own their Redis database (db 15, see settings.TESTING): start it empty."""
    stream.client().flushdb()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password")


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def alice_api(alice):
    return client_for(alice)


@pytest.fixture
def bob_api(bob):
    return client_for(bob)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url():
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    return f"postgresql://{s['USER']}:{s['PASSWORD']}@{host}/{s['NAME']}"


class Live:
    """Real web (uvicorn), worker and beat processes on the test database and Redis."""

    def __init__(self, tmp):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **LIVE_ENV, "DATABASE_URL": database_url()}
        self.logs = tmp
        self.processes = {}

    def start(self, name, *args):
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )
        return self.processes[name]

    def start_web(self):
        self.start(
            "web",
            "uvicorn",
            "config.asgi:application",
            "--port",
            str(self.port),
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

    def start_worker(self, name="worker"):
        return self.start(name, "celery", "-A", "config", "worker", "-Q", "runs,default",
                          "-n", f"{name}-{os.getpid()}@%h", "-l", "warning")  # fmt: skip

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


@pytest.fixture(scope="session")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        processes = Live(tmp_path_factory.mktemp("live"))
        processes.start_web()
        processes.start_worker()
    yield processes
    processes.stop_all()


@pytest.fixture
def live_api(live, transactional_db, alice):
    """Alice's token, for HTTP calls to the live web process."""
    return {"Authorization": f"Bearer {Token.objects.create(user=alice).key}"}


def wait_for(predicate, timeout=20, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def wait_for_status(run_id, statuses, timeout=20):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def reached():
        run = Run.objects.get(pk=run_id)
        return run if run.status in statuses else None

    return wait_for(reached, timeout, message=f"run {run_id} to be {statuses}")
