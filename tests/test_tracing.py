"""Tracing, end to end: real web and worker processes export their spans over OTLP/HTTP to a
receiver this test runs on 127.0.0.1 (tests/otlp.py), and a run started through the API is one
trace from the request, through the Celery task, to its model turns and tool calls; a run that
waited for a person goes on in that trace. Off (no endpoint), nothing is set up."""

import json
import os
import subprocess
import sys

import httpx
import pytest
from django.db import connection

from runs.models import InputRequest, Run
from workflows.models import Workflow

from conftest import bearer, new_thread, start, start_live, wait_for, wait_for_status
from examples import THREE_STEPS
from live import ROOT, free_port
from otlp import Collector
from redis_server import RedisServer
from sse import assert_consecutive, follow

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

START = "POST api/threads/(?P<pk>[^/.]+)/runs/$"  # the request's route, as DRF's router has it
TOOL_CALL = '/tool calculator {"expression": "6*7"}'


@pytest.fixture(scope="module")
def traced(django_db_setup, django_db_blocker, tmp_path_factory):
    """Web and worker exporting to a Collector, on a Redis of their own (no other worker takes
    their runs)."""
    tmp = tmp_path_factory.mktemp("traced")
    redis = RedisServer(tmp)
    with Collector() as collector, django_db_blocker.unblock():
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        processes = start_live(tmp, REDIS_URL=redis.url, RUN_REQUEUE_SECONDS="600", **env)
        processes.collector = collector
        yield processes
        processes.stop_all()
    redis.kill()


def run_spans(collector, run_id, count=1, status="completed"):
    """The run spans of `run_id` once `count` of them have arrived, the last with `status`."""

    def arrived():
        spans = [s for s in collector.received() if s.attributes.get("relay.run.id") == run_id]
        spans = [s for s in spans if s.name == "run"]
        ended = [s.attributes.get("relay.run.status") for s in spans]
        return spans if len(spans) == count and status in ended else None

    spans = wait_for(arrived, timeout=30, message=f"{count} run spans of {run_id}")
    return sorted(spans, key=lambda s: s.attributes["relay.run.attempt"])


def trace_of(collector, trace_id, *, having=()):
    """The spans of the trace once its root (the web request), the parents of all its spans, and
    the spans `having` names (ids) have arrived: a process exports a span when it ends, so a
    parent comes after its children, and the processes export apart."""

    def arrived():
        spans = [s for s in collector.received() if s.trace_id == trace_id]
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_id and s.service == "relay-web"]
        parents = {s.parent_id for s in spans if s.parent_id}
        return spans if roots and parents <= ids and set(having) <= ids else None

    return wait_for(arrived, timeout=30, message=f"the spans of trace {trace_id}")


def relays(spans, parent):
    """Relay's own spans (turns, tool calls, steps) that are children of `parent`, in order."""
    children = [s for s in spans if s.parent_id == parent.span_id]
    ours = [s for s in children if {"gen_ai.operation.name", "relay.step.id"} & set(s.attributes)]
    return sorted(ours, key=lambda s: s.start)


def ancestry(spans, span):
    """The span's ancestors' (service, kind, name), its parent first."""
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id:
        span = by_id[span.parent_id]
        chain.append((span.service, span.kind, span.name))
    return chain


def test_it_traces_a_run_from_the_api_call_through_the_worker_to_each_turn_and_tool_call(
    traced, alice
):
    thread = new_thread(alice, words=5)
    # two calls in one turn: they run at once, each in a thread of its own
    headers = bearer(alice)
    run_id = start(traced, headers, thread, f"{TOOL_CALL}\n/tool current_time {{}}")
    events = follow(traced.base_url, run_id, headers)  # the stream works as it does untraced
    assert_consecutive(events)
    assert events[-1].json["status"] == "completed"
    run = wait_for_status(run_id, Run.Status.COMPLETED)
    (span,) = run_spans(traced.collector, run_id)
    spans = trace_of(traced.collector, span.trace_id)

    # API request -> celery publish -> celery task -> run
    assert ancestry(spans, span) == [
        ("relay-worker", "CONSUMER", "run/runs.tasks.execute_run_task"),
        ("relay-web", "PRODUCER", "apply_async/runs.tasks.execute_run_task"),
        ("relay-web", "SERVER", START),
    ]
    assert run.traceparent.split("-")[1] == span.trace_id
    assert span.service == "relay-worker"
    assert span.attributes == {
        "relay.run.id": run_id,
        "relay.run.kind": "agent",
        "relay.run.trigger": "api",
        "relay.run.attempt": 1,
        "relay.agent.id": alice.agents.get().pk,
        "gen_ai.request.model": "demo",
        "gen_ai.usage.input_tokens": run.input_tokens,
        "gen_ai.usage.output_tokens": run.output_tokens,
        "relay.run.status": "completed",
    }
    assert run.input_tokens > 0 and run.output_tokens > 0

    # the model's two turns (the calls, then the answer) and the tool calls between them
    first, *tools, second = relays(spans, span)
    turns = [first, second]
    assert [t.name for t in turns] == ["chat demo", "chat demo"]
    assert [t.kind for t in turns] == ["CLIENT", "CLIENT"]
    assert [t.attributes["gen_ai.response.finish_reasons"] for t in turns] == [
        ["tool_calls"],
        ["stop"],
    ]
    assert all(t.attributes["gen_ai.system"] == "demo" for t in turns)
    assert sum(t.attributes["gen_ai.usage.input_tokens"] for t in turns) == run.input_tokens
    assert sum(t.attributes["gen_ai.usage.output_tokens"] for t in turns) == run.output_tokens
    calls = {m.name: m.tool_call_id for m in thread.messages.filter(role="tool")}
    assert sorted(
        (t.name, t.attributes["gen_ai.tool.name"], t.attributes["gen_ai.tool.call.id"],
         t.attributes["relay.tool.outcome"])
        for t in tools
    ) == [
        ("execute_tool calculator", "calculator", calls["calculator"], "ok"),
        ("execute_tool current_time", "current_time", calls["current_time"], "ok"),
    ]  # fmt: skip

    # and the official instrumentations' spans, in the same trace
    systems = {s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in spans}
    database = {"postgresql": "postgresql", "sqlite": "sqlite"}[connection.vendor]
    assert {"redis", database} <= systems  # the event log's appends, the broker's; the queries
    queries = [s for s in spans if s.attributes.get("db.system") == database]
    assert {s.service for s in queries} == {"relay-web", "relay-worker"}
    assert {s.service for s in spans} == {"relay-web", "relay-worker"}


def test_a_failed_run_and_its_turn_carry_the_error(traced, alice):
    # the default provider's endpoint (LLM_BASE_URL) has nobody listening
    thread = new_thread(alice, model="gpt-4o-mini")
    run_id = start(traced, bearer(alice), thread, "Hello")
    run = wait_for_status(run_id, Run.Status.FAILED)
    (span,) = run_spans(traced.collector, run_id, status="failed")
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert (span.status, span.status_message) == (2, run.error)
    (turn,) = relays(trace_of(traced.collector, span.trace_id), span)
    assert turn.name == "chat gpt-4o-mini"
    assert turn.attributes["gen_ai.system"] == "openai"
    assert turn.status == 2 and turn.status_message


def test_a_run_that_waited_for_a_person_goes_on_in_its_trace_linked_to_the_answer(traced, alice):
    thread = new_thread(alice, words=3, tools=["calculator"], approve_tools=["calculator"])
    headers = bearer(alice)
    run_id = start(traced, headers, thread, TOOL_CALL)
    wait_for_status(run_id, Run.Status.WAITING)
    request = InputRequest.objects.get(run_id=run_id)
    r = httpx.post(f"{traced.base_url}/api/runs/{run_id}/respond/", headers=headers,
                   json={"request": request.pk, "approve": True}, timeout=10)  # fmt: skip
    assert r.status_code == 202, r.text
    wait_for_status(run_id, Run.Status.COMPLETED)

    first, second = run_spans(traced.collector, run_id, count=2)
    assert first.attributes["relay.run.status"] == "waiting"
    assert second.attributes["relay.run.status"] == "completed"
    # the same trace: the second attempt is a child of the request that started the run
    assert second.trace_id == first.trace_id
    spans = trace_of(traced.collector, first.trace_id)
    assert ancestry(spans, second) == [("relay-web", "SERVER", START)]
    assert [s.name for s in relays(spans, second)] == [
        "execute_tool calculator",
        "chat demo",
    ]
    # linked, both ways, to the answer's trace, which sent the second attempt
    ((trace_id, span_id, link),) = second.links
    assert link == {"relay.link": "sent by"}
    answer = trace_of(traced.collector, trace_id, having=[span_id])
    task = next(s for s in answer if s.span_id == span_id)
    assert ancestry(answer, task) == [
        ("relay-web", "PRODUCER", "apply_async/runs.tasks.execute_run_task"),
        ("relay-web", "SERVER", "POST api/runs/(?P<pk>[^/.]+)/respond/$"),
    ]
    assert [(t, link) for t, _, link in task.links] == [
        (first.trace_id, {"relay.link": "continues run"})
    ]


def test_a_workflow_run_has_a_span_per_step(traced, alice):
    workflow = Workflow.objects.create(owner=alice, name="Sum", definition=THREE_STEPS)
    pace_agent = alice.agents.get()
    pace_agent.config = {"demo": {"words": 3, "delay_ms": 0}}
    pace_agent.save()
    r = httpx.post(f"{traced.base_url}/api/workflows/{workflow.pk}/runs/", headers=bearer(alice),
                   json={"inputs": {"a": 5}}, timeout=10)  # fmt: skip
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    wait_for_status(run_id, Run.Status.COMPLETED)
    (span,) = run_spans(traced.collector, run_id)
    assert span.attributes["relay.run.kind"] == "workflow"
    spans = trace_of(traced.collector, span.trace_id)
    steps = relays(spans, span)
    assert [(s.name, s.attributes["relay.step.status"]) for s in steps] == [
        ("step sum", "completed"),
        ("step big", "completed"),
        ("step shout", "skipped"),
        ("step explain", "completed"),
    ]
    assert [s.name for s in relays(spans, steps[0])] == ["execute_tool calculator"]
    assert steps[3].attributes["gen_ai.request.model"] == "demo"
    assert [s.name for s in relays(spans, steps[3])] == ["chat demo"]


def test_beat_traces_what_it_sends_to_the_worker(traced):
    # only while this test runs: its reaper passes could take other tests' runs (the database
    # is shared), and the worker (RUN_REQUEUE_SECONDS) does not send queued ones again
    traced.start_beat()

    def reaper_pass():
        spans = traced.collector.received()
        sent = {s.trace_id: s for s in spans if s.service == "relay-beat" and s.kind == "PRODUCER"}
        tasks = [s for s in spans if s.name == "run/runs.tasks.reap_runs_task"]
        return next(((s, sent[s.trace_id]) for s in tasks if s.trace_id in sent), None)

    try:
        task, publish = wait_for(reaper_pass, timeout=30, message="a reaper pass traced from beat")
    finally:
        traced.stop("beat")
    assert (task.service, task.kind) == ("relay-worker", "CONSUMER")
    assert task.parent_id == publish.span_id
    assert publish.name == "apply_async/runs.tasks.reap_runs_task"


def test_a_run_handed_back_at_a_shutdown_goes_on_in_its_trace(traced, alice):
    thread = new_thread(alice, words=300, delay_ms=20)  # about 6 s
    run_id = start(traced, bearer(alice), thread)
    wait_for(lambda: thread.messages.filter(role="assistant").exists(), message="a reply")
    traced.stop("worker")  # SIGTERM: it hands its runs back and exits, its spans sent
    traced.start_worker()
    wait_for_status(run_id, Run.Status.COMPLETED, timeout=30)

    first, second = run_spans(traced.collector, run_id, count=2)
    assert first.attributes["relay.run.status"] == "queued"
    assert second.trace_id == first.trace_id and not second.links
    spans = trace_of(traced.collector, first.trace_id)
    # sent from the first attempt's span, within the run's trace
    chain = ancestry(spans, second)
    assert chain[:3] == [
        ("relay-worker", "CONSUMER", "run/runs.tasks.execute_run_task"),
        ("relay-worker", "PRODUCER", "apply_async/runs.tasks.execute_run_task"),
        ("relay-worker", "INTERNAL", "run"),
    ]
    assert chain[3:] == ancestry(spans, first)


def test_a_prefork_worker_traces_its_runs_from_each_child(tmp_path, alice):
    redis = RedisServer(tmp_path)
    with Collector() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        prefork = {"WORKER_POOL": "prefork", "WORKER_CONCURRENCY": "2"}
        processes = start_live(tmp_path, REDIS_URL=redis.url, worker_env=prefork, **env)
        try:
            run_id = start(processes, bearer(alice), new_thread(alice, words=3), TOOL_CALL)
            wait_for_status(run_id, Run.Status.COMPLETED)
            (span,) = run_spans(collector, run_id)
            spans = trace_of(collector, span.trace_id)
        finally:
            processes.stop_all()
            redis.kill()
    assert ancestry(spans, span)[-1] == ("relay-web", "SERVER", START)
    assert [s.name for s in relays(spans, span)] == [
        "chat demo",
        "execute_tool calculator",
        "chat demo",
    ]


def test_a_collector_that_is_down_costs_the_runs_nothing(tmp_path, alice):
    redis = RedisServer(tmp_path)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: every export is refused
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": nobody, "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}  # fmt: skip
    processes = start_live(tmp_path, REDIS_URL=redis.url, **env)
    try:
        threads = [new_thread(alice, words=5) for _ in range(3)]
        runs = [start(processes, bearer(alice), thread, TOOL_CALL) for thread in threads]
        for run_id in runs:
            run = wait_for_status(run_id, Run.Status.COMPLETED, timeout=20)
            assert run.traceparent  # traced all the same
            assert run.messages.get(role="tool").content == "42"
    finally:
        processes.stop_all()
        redis.kill()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


OFF = """
import json, sys
import config.asgi, config.celery
from django.conf import settings
from opentelemetry import trace
from config.tracing import tracing_setup
import psycopg, redis, sqlite3.dbapi2
print(json.dumps({
    "provider": type(trace.get_tracer_provider()).__name__,
    "setup": tracing_setup(service="relay-worker") is not None,
    "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "instrumentations": sorted(
        m for m in sys.modules if m.startswith("opentelemetry.instrumentation.")
    ),
    "middleware": [m for m in settings.MIDDLEWARE if "opentelemetry" in m],
    "psycopg": hasattr(psycopg.connect, "__wrapped__"),
    "sqlite": hasattr(sqlite3.dbapi2.connect, "__wrapped__"),
    "redis": hasattr(redis.Redis.execute_command, "__wrapped__"),
}))
"""


def test_with_no_endpoint_nothing_is_set_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["RELAY_VAR_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", OFF], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "provider": "ProxyTracerProvider",
        "setup": False,
        "sdk": [],
        "instrumentations": [],
        "middleware": [],
        "psycopg": False,
        "sqlite": False,
        "redis": False,
    }


def test_with_no_endpoint_a_run_keeps_no_traceparent(alice_api, alice, no_queue):
    thread = new_thread(alice)
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", {"message": "Hi"})
    assert r.status_code == 202, r.data
    assert Run.objects.get(pk=r.data["id"]).traceparent == ""
