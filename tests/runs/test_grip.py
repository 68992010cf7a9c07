"""The stream tests once more through a real Pushpin (GRIP mode): two web processes behind it,
two worker processes, every request through Pushpin as in production."""

import os
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import jwt
import psutil
import pytest
from django.test import override_settings

from runs import grip, stream
from runs.models import Run

from conftest import bearer, new_thread, start, wait_for_status
from live import ROOT, Live
from pushpin import Pushpin
from sse import assert_transcript, follow, follow_resuming

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def grip_redis():
    """A Redis database of their own (queue, logs) on the session's server, so that the
    session's other workers, which do not publish to Pushpin, cannot take these runs; this
    process reads the logs there too."""
    from django.conf import settings

    parts = urlsplit(settings.REDIS_URL)
    url = urlunsplit(parts._replace(path="/12" if parts.path == "/13" else "/13"))
    with override_settings(REDIS_URL=url):
        stream.client.cache_clear()
        stream._append_script.cache_clear()
        stream.client().flushdb()
        yield url
    stream.client.cache_clear()
    stream._append_script.cache_clear()


@pytest.fixture(scope="module")
def behind_pushpin(grip_redis, django_db_setup, django_db_blocker, tmp_path_factory):
    """Pushpin in front of two uvicorn processes (one port, the kernel spreads connections),
    and two Celery workers, all publishing through Pushpin."""
    tmp = tmp_path_factory.mktemp("grip")
    with django_db_blocker.unblock():
        processes = Live(tmp, REDIS_URL=grip_redis)
    # a publish that does not follow on waits this long for the gap before Pushpin recovers
    pushpin = Pushpin(tmp / "pushpin", [processes.port], message_wait=300).start()
    processes.env["GRIP_URL"] = pushpin.grip_url
    try:
        processes.start_web(processes=2)
        processes.start_worker("worker1")
        processes.start_worker("worker2")
        processes.base_url = pushpin.base_url  # the clients' way in
        processes.pushpin = pushpin
        yield processes
    finally:
        processes.stop_all()
        pushpin.stop()


@pytest.fixture
def api(behind_pushpin, transactional_db, alice):
    return bearer(alice)


def test_it_streams_a_run_through_pushpin(behind_pushpin, api, alice):
    run_id = start(behind_pushpin, api, new_thread(alice, words=60, delay_ms=10))
    received = follow(behind_pushpin.base_url, run_id, api)
    wait_for_status(run_id, Run.TERMINAL)
    assert_transcript(received, run_id)
    assert received[-1].json["status"] == "completed"


def test_the_streams_live_on_while_the_web_processes_are_frozen(behind_pushpin, api, alice):
    """Twenty clients follow a slow run through Pushpin. With every web process stopped
    (SIGSTOP), the worker's events still reach all of them: Pushpin holds the streams."""
    run_id = start(behind_pushpin, api, new_thread(alice, words=400, delay_ms=20))
    auth = "".join(f"{k}: {v}\r\n" for k, v in api.items())
    request = f"GET /api/runs/{run_id}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
    address = "127.0.0.1", behind_pushpin.pushpin.port
    clients = [socket.create_connection(address, timeout=10) for _ in range(20)]
    web = psutil.Process(behind_pushpin.processes["web"].pid)
    frozen = [web, *web.children()]
    try:
        for client in clients:
            client.sendall(request.encode())
            received = b""
            while b"stream-open" not in received:
                received += client.recv(65536)
        time.sleep(2)  # Pushpin asks the web once about each new channel, a second after
        for process in frozen:
            process.suspend()
        for client in clients:
            received = b""
            while received.count(b"event: message.delta") < 3:
                received += client.recv(65536)
    finally:
        for process in frozen:
            process.resume()
        httpx.post(f"{behind_pushpin.base_url}/api/runs/{run_id}/stop/", headers=api)
        for client in clients:
            client.close()


def test_it_resumes_through_pushpin_with_last_event_id(behind_pushpin, api, alice):
    run_id = start(behind_pushpin, api, new_thread(alice, words=80, delay_ms=20))
    deltas = iter(range(1000))
    received = follow_resuming(
        behind_pushpin.base_url,
        run_id,
        api,
        deadline=time.monotonic() + 60,
        drop=lambda e: e.type == "message.delta" and next(deltas) % 10 == 9,
    )
    wait_for_status(run_id, Run.TERMINAL)
    assert_transcript(received, run_id)


def test_it_stops_a_run_through_pushpin(behind_pushpin, api, alice):
    run_id = start(behind_pushpin, api, new_thread(alice, words=1000, delay_ms=50))

    def stop_at_first_delta(event):
        if event.type == "message.delta":
            r = httpx.post(f"{behind_pushpin.base_url}/api/runs/{run_id}/stop/", headers=api)
            assert r.status_code == 202, r.text
        return False

    received = follow(behind_pushpin.base_url, run_id, api, until=stop_at_first_delta)
    assert received[-1].json["status"] == "stopped"
    wait_for_status(run_id, Run.TERMINAL)
    assert_transcript(received, run_id)


def test_pushpin_recovers_an_event_it_never_got(behind_pushpin, api, alice):
    """An event that reached the log but not Pushpin (a lost publish): the next publish does
    not follow on, and Pushpin fetches what it lacks from the web process (the signed next
    link), so the client gets both, in order, once."""
    run_id = start(behind_pushpin, api, new_thread(alice, words=1000, delay_ms=50))
    lost = []

    def lose_one(event):
        if event.type == "message.delta" and not lost:
            # appended to the log only: no pub/sub, no Pushpin
            lost.append(
                stream.StreamStorage().append_event(
                    f"run-{run_id}", "usage", '{"note": "lost"}', publish=False
                )
            )
        if len(lost) == 1 and event.number > lost[0].id:
            httpx.post(f"{behind_pushpin.base_url}/api/runs/{run_id}/stop/", headers=api)
            lost.append(None)
        return False

    received = follow(behind_pushpin.base_url, run_id, api, until=lose_one)
    numbers = [e.number for e in received]
    assert numbers == list(range(1, len(numbers) + 1))
    assert any(e.type == "usage" and e.json == {"note": "lost"} for e in received)
    assert received[-1].json["status"] == "stopped"


def test_only_pushpin_can_ask_for_a_recovery_and_only_with_the_runs_link(
    behind_pushpin, api, alice
):
    run_id = start(behind_pushpin, api, new_thread(alice, words=5))
    wait_for_status(run_id, Run.TERMINAL)
    web = f"http://127.0.0.1:{behind_pushpin.port}/api/runs/{run_id}/events/"
    last = {"Grip-Last": f"run-{run_id}; last-id=0"}
    # straight to a web process, with a made-up signature: not Pushpin, so no credentials
    forged = {"Grip-Sig": "forged", **last}
    assert httpx.get(web, headers=forged).status_code == 401
    # signed as Pushpin signs, but with a link the application did not make
    claims = {"iss": "pushpin", "exp": int(time.time()) + 60}
    signed = {"Grip-Sig": jwt.encode(claims, behind_pushpin.pushpin.sig_key), **last}
    assert httpx.get(web, headers=signed, params={"grant": "forged"}).status_code == 404
    r = httpx.get(web, headers=signed)
    assert r.status_code == 404


def _settings_with(**env):
    """Load the settings in a fresh process with `env`: (exit status, output)."""
    env = {**os.environ, **env}
    code = "import django; django.setup()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


def test_grip_mode_refuses_to_start_without_pushpins_verify_key():
    status, output = _settings_with(GRIP_URL="http://127.0.0.1:5561")
    assert status != 0
    assert "ImproperlyConfigured" in output and "verify-key" in output
    assert _settings_with(GRIP_URL="http://127.0.0.1:5561?verify-key=k")[0] == 0


def _grant(path, channel):
    """The grant in the next link that the web process gives Pushpin for `channel`."""
    link = grip.hold_headers(type("Request", (), {"path": path})(), channel, 0)["Grip-Link"]
    return parse_qs(urlsplit(link[1 : link.index(">")]).query)["grant"][0]


def test_a_grant_expires_with_the_runs_log(settings, monkeypatch):
    settings.GRIP_URL = "http://127.0.0.1:5561?verify-iss=pushpin&verify-key=k"

    class Request:
        def __init__(self, grant):
            self.GET = {"grant": grant}

    now = time.time()
    monkeypatch.setattr(grip.time, "time", lambda: now)
    link = _grant("/api/runs/x/events/", "run-x")
    assert grip.granted(Request(link), "run-x")
    assert not grip.granted(Request(link), "run-y")
    # the log outlives neither the longest run plus its retention, nor this grant
    lifetime = settings.RUN_TIME_LIMIT + settings.RUN_EVENTS_RETENTION
    monkeypatch.setattr(grip.time, "time", lambda: now + lifetime - 1)
    assert grip.granted(Request(link), "run-x")
    monkeypatch.setattr(grip.time, "time", lambda: now + lifetime + grip.GRANT_BUCKET + 1)
    assert not grip.granted(Request(link), "run-x")


def test_a_grant_is_honoured_only_on_a_request_pushpin_signed(behind_pushpin, api, alice):
    run_id = start(behind_pushpin, api, new_thread(alice, words=5))
    wait_for_status(run_id, Run.TERMINAL)
    web = f"http://127.0.0.1:{behind_pushpin.port}/api/runs/{run_id}/events/"
    grant = {"grant": _grant(web, f"run-{run_id}")}
    last = {"Grip-Last": f"run-{run_id}; last-id=0"}
    # a client holding the grant, straight to a web process: no credentials, no events
    for signature in ({}, {"Grip-Sig": "forged"}):
        r = httpx.get(web, headers={**signature, **last}, params=grant)
        assert r.status_code == 401, r.text
    claims = {"iss": "pushpin", "exp": int(time.time()) + 60}
    signed = {"Grip-Sig": jwt.encode(claims, behind_pushpin.pushpin.sig_key), **last}
    r = httpx.get(web, headers=signed, params=grant)
    assert r.status_code == 200 and "event: run.status" in r.text
