import atexit
import json
import os
import time
from urllib.parse import urlsplit

import celery
import httpx
import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError
from django.test import Client, TransactionTestCase
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from config.celery import app as celery_app

from live import Live
from redis_server import RedisServer

# The session's own Redis (broker, event logs, stop flags), so that sessions side by side, or a
# session beside `make run`, never take each other's tasks. Started here, before anything has
# connected: pytest-django has loaded the settings, but no client, listener or Celery
# connection exists yet. The web and worker processes the tests start inherit REDIS_URL.
SESSION_REDIS = RedisServer()
if not SESSION_REDIS.dies_with_parent:  # else it ends with this process, after its threads
    atexit.register(SESSION_REDIS.stop)
os.environ["REDIS_URL"] = settings.REDIS_URL = settings.CELERY_BROKER_URL = SESSION_REDIS.url
settings.EVENTSTREAM_REDIS = {**settings.EVENTSTREAM_REDIS, "port": SESSION_REDIS.port, "db": 0}
# A failing model fails at once, in this process and the ones the tests start: the tests of
# retries turn them on (tests/agents/test_llm_retry.py).
os.environ["LLM_MAX_RETRIES"] = "0"
settings.LLM_MAX_RETRIES = 0

from django_celery_beat.models import PeriodicTask  # noqa: E402

from agents import services  # noqa: E402
from agents.models import Agent, ApiKey, McpServer, Provider, create_thread  # noqa: E402
from runs import stream  # noqa: E402  (after the settings above)
from runs.models import Message, Run, Thread  # noqa: E402
from scheduling.models import Schedule  # noqa: E402
from workflows.models import StepRun, Workflow  # noqa: E402

_flush = TransactionTestCase._fixture_teardown


def _flush_past_deadlocks(self):
    """A transactional test's database is emptied (TRUNCATE) at its end while a live process
    the session runs may still be ending a run: a transaction holding the run's row that then
    reads another table (its webhooks, its day's usage) deadlocks with the TRUNCATE, and
    PostgreSQL aborts one of the two. When that is the flush, it is tried again (the other has
    committed by then), instead of leaving the rows to fail the next test."""
    for attempt in range(5):
        try:
            return _flush(self)
        except CommandError as exc:
            if attempt == 4 or not isinstance(exc.__cause__, OperationalError):
                raise
            time.sleep(0.2)


TransactionTestCase._fixture_teardown = _flush_past_deadlocks

pytest.register_assert_rewrite("sse")  # its assertions on transcripts say what differs

# Fault tests (tests/faults, marked `faults`) run `small` counts in CI and `large` ones under
# `make faults`.
FAULT_SCALE = os.environ.get("FAULT_SCALE", "small")
if FAULT_SCALE not in ("small", "large"):
    raise ValueError(f"FAULT_SCALE must be small or large, not {FAULT_SCALE!r}")


def at_scale(small, large):
    return small if FAULT_SCALE == "small" else large


@pytest.fixture(scope="session", autouse=True)
def _own_redis():
    """Every Redis client of the session talks to the session's own server."""
    broker = celery_app.conf.broker_url
    assert urlsplit(broker).port == SESSION_REDIS.port, broker
    assert stream.client().connection_pool.connection_kwargs["port"] == SESSION_REDIS.port


@pytest.fixture
def own_redis(tmp_path, settings, request):
    """A redis-server for one test (`persist` by indirect parametrization), for web and worker
    processes that must not share the session's: they can kill and restart it, and no other
    test's worker takes their runs. Start their runs through their web process: this process
    reads the run logs from it too, but its Celery app still enqueues on the session's Redis."""
    server = RedisServer(tmp_path, persist=getattr(request, "param", False))
    # the cached client and the script registered on it must go with the URL
    settings.REDIS_URL = server.url
    stream.client.cache_clear()
    stream._append_script.cache_clear()
    yield server
    server.kill()
    stream.client.cache_clear()
    stream._append_script.cache_clear()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password")


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiKey.issue(owner=user)[1]}")
    return client


@pytest.fixture
def alice_web(alice):
    """Alice logged in to the pages."""
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def alice_api(alice):
    return client_for(alice)


@pytest.fixture
def bob_api(bob):
    return client_for(bob)


def start_live(tmp, worker_env=None, **env):
    """Web and worker processes on the test database (stop them with stop_all()); `worker_env`:
    variables for the worker only."""
    # Short leases so a killed worker's run is reaped within seconds, not a minute.
    processes = Live(
        tmp,
        **{
            "RUN_LEASE_SECONDS": "3",
            "RUN_HEARTBEAT_SECONDS": "1",
            "RUN_REAPER_SECONDS": "1",
            "RUN_REQUEUE_SECONDS": "3",
            "LLM_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens: a model never reached
            "MCP_ALLOW_PRIVATE": "1",  # the tests' MCP servers listen on 127.0.0.1
            **env,
        },
    )
    processes.start_web()
    processes.start_worker(env=worker_env)
    return processes


@pytest.fixture(scope="session")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        processes = start_live(tmp_path_factory.mktemp("live"))
    yield processes
    processes.stop_all()


def bearer(user):
    return {"Authorization": f"Bearer {ApiKey.issue(owner=user)[1]}"}


@pytest.fixture
def live_api(live, transactional_db, alice):
    """Alice's token, for HTTP calls to the live web process."""
    return bearer(alice)


class Queue:
    """What the code under test enqueued, each message as a worker would receive it: through a
    JSON round trip, so an argument that would not serialize (a UUID, a model) fails here, not in
    production. Plain `json`, stricter than kombu's, which would carry a UUID as a tagged object:
    task arguments stay plain ids that any consumer reads."""

    def __init__(self):
        self.sent = []  # (task name, args, kwargs)

    def apply_async(self, task, args=None, kwargs=None, **options):
        message = json.loads(json.dumps({"args": list(args or ()), "kwargs": kwargs or {}}))
        self.sent.append((task.name, message["args"], message["kwargs"]))

    def args(self, task):
        """The arguments of each message sent to `task`, in order."""
        return [args for name, args, _ in self.sent if name == task.name]

    def run(self):
        """Be the worker: run what was sent, in order, in this process."""
        sent, self.sent = self.sent, []
        for name, args, kwargs in sent:
            celery_app.tasks[name](*args, **kwargs)


@pytest.fixture
def no_queue(monkeypatch):
    """For tests that are the worker: what they enqueue stays in a Queue (run it with .run()),
    away from a live worker the end-to-end tests may have left running, which would otherwise
    race them for the claim. `delay` calls `apply_async`, so both ways of sending land here."""
    queue = Queue()

    def apply_async(task, args=None, kwargs=None, **options):
        queue.apply_async(task, args, kwargs, **options)

    monkeypatch.setattr(celery.Task, "apply_async", apply_async)
    return queue


def pace(user, words=40, delay_ms=0, **agent_fields):
    """The user's agent, its demo replies `words` long at `delay_ms` a word (at once unless a
    test needs the time), with the other agent fields given."""
    agent = user.agents.get()
    agent.config = {"demo": {"words": words, "delay_ms": delay_ms}}
    for field, value in agent_fields.items():
        setattr(agent, field, value)
    agent.save()
    return agent


def new_thread(user, words=40, delay_ms=0, **agent_fields):
    """A thread on the user's agent, paced as `pace` does."""
    return create_thread(owner=user, agent=pace(user, words, delay_ms, **agent_fields))


def waiting_run(user, no_queue, message='/tool calculator {"expression": "6*7"}', **agent_fields):
    """A run of the user's that waits for a person: by default its calculator call for
    approval. The test is the worker (`no_queue`), up to the wait."""
    agent_fields.setdefault("tools", ["calculator", "ask_user"])
    agent_fields.setdefault("approve_tools", ["calculator"])
    thread = new_thread(user, **agent_fields)
    run = services.agent_start(user=user, thread=thread, message=message)
    no_queue.run()
    run.refresh_from_db()
    return run


@pytest.fixture
def thread(alice):
    """Alice's thread with her agent as it comes, for tests that run nothing."""
    return create_thread(owner=alice, agent=alice.agents.get())


def start(live, headers, thread, message="Tell me something", **body):
    """Start a run through the live web process; its id."""
    r = httpx.post(
        f"{live.base_url}/api/threads/{thread.pk}/runs/",
        json={"message": message, **body},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def saved():
    """Every row a request could write, to compare before and after one that must save nothing."""
    models = [Agent, Provider, McpServer, Thread, Message, Run, StepRun, Workflow, Schedule,
              PeriodicTask]  # fmt: skip
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in models}


def logged(run):
    """The run's event log: (id, type, data) for each event."""
    return [
        (e.id, e.type, json.loads(e.data))
        for e in stream.StreamStorage().get_events(run.channel, 0, limit=1000)
    ]


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


def metric_samples(text):
    """The samples of a /metrics text: {(name, ((label, value), ...)): value}, the relay_ ones."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("relay_")
    }
