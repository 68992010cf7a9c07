"""`make run` as a user runs it: Ctrl-C stops everything it started, the Redis it started too,
and a process that dies stops the others and fails `make run`, saying so."""

import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest
import redis

from conftest import wait_for
from live import ROOT, database_url, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def make_run(tmp_path):
    """`make run` in a session of its own (its Ctrl-C is a SIGINT to the group), on a Redis port
    nothing listens on, so that it starts its own redis-server."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "WEB_PORT": str(free_port()),
           "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING"}  # fmt: skip
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # -o venv: this venv as it is (no install)
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-o", "venv", "run", f"VENV={sys.prefix}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    make.output = lambda: log.read_text(errors="replace")
    make.redis = redis.Redis(port=port, socket_timeout=2)
    try:
        wait_for(lambda: make.output().count(" started (pid=") == 4, timeout=90, interval=0.2,
                 message="make run to start web, worker, beat and webhooks")  # fmt: skip
        assert make.redis.ping()
        make.processes = psutil.Process(make.pid).children(recursive=True)
        yield make
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        for process in psutil.Process().children(recursive=True):
            if process.pid in {p.pid for p in getattr(make, "processes", [])}:
                process.kill()
        with contextlib.suppress(redis.RedisError):  # stopped, as it should be
            make.redis.shutdown(nosave=True)


def stopped(make):
    """Whether make run ended and left nothing it started running, its Redis included."""
    assert make.wait(30) is not None
    alive = [p for p in make.processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    with pytest.raises(redis.ConnectionError):
        make.redis.ping()
    return True


def test_ctrl_c_stops_what_make_run_started_its_redis_too(make_run):
    os.killpg(make_run.pid, signal.SIGINT)
    assert stopped(make_run)


def test_a_process_that_dies_stops_the_others_and_fails_make_run(make_run):
    (beat,) = [p for p in make_run.processes if p.cmdline()[-3:] == ["beat", "-l", "info"]]
    beat.kill()
    assert stopped(make_run)
    assert make_run.returncode != 0
    assert "make run: a process ended" in make_run.output()
