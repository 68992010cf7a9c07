"""/metrics scraped over HTTP from a real web process, after runs that a real worker executed to
each outcome: the counts are what happened, whichever process recorded them."""

import httpx
import pytest

from runs.models import Run
from workflows.models import Workflow

from conftest import (
    bearer,
    metric_samples,
    new_thread,
    start,
    start_live,
    wait_for,
    wait_for_status,
)
from examples import THREE_STEPS
from live import ROOT, Live

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

TOKEN = "metrics-token-for-the-tests"


@pytest.fixture(scope="module")
def watched(django_db_setup, django_db_blocker, tmp_path_factory):
    """Web and worker processes with a METRICS_TOKEN."""
    with django_db_blocker.unblock():
        processes = start_live(tmp_path_factory.mktemp("metrics"), METRICS_TOKEN=TOKEN)
    yield processes
    processes.stop_all()


ARTIFACTS = ROOT / "tests" / "artifacts"


SERVED = {
    "relay_runs_started_total", "relay_runs_finished_total", "relay_run_duration_seconds",
    "relay_run_time_to_first_event_seconds", "relay_runs_active",
    "relay_run_oldest_running_seconds", "relay_queue_length", "relay_runs_reaped_total",
    "relay_runs_resumed_total", "relay_reaper_last_run_timestamp_seconds", "relay_streams_open",
    "relay_tokens_total", "relay_model_retries_total", "relay_tool_calls_total",
    "relay_tool_call_duration_seconds", "relay_schedule_fires_total", "relay_metrics_source_up",
    "relay_webhook_deliveries_total", "relay_webhook_oldest_pending_seconds",
}  # fmt: skip


def families(live):
    answer = httpx.get(f"{live.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    lines = answer.text.splitlines()
    return {line.split()[2] for line in lines if line.startswith("# TYPE relay_")}


def scrape(live):
    answer = httpx.get(
        f"{live.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "metrics.txt").write_text(answer.text)  # the last scrape, for a reader
    return metric_samples(answer.text)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_a_web_process_serves_every_metric_whichever_process_records_it(watched):
    assert families(watched) == SERVED


def test_it_counts_runs_of_each_outcome_as_a_scrape_shows_them(watched, alice):
    headers = bearer(alice)
    before = scrape(watched)

    # one at a time: the threads share alice's one agent, which each new_thread changes
    plain = {"model": "demo", "tools": ["calculator"], "approve_tools": []}
    completed = start(watched, headers, new_thread(alice, words=5, **plain), "calculate 6 * 7")
    wait_for_status(completed, "completed", timeout=60)
    failed = start(watched, headers, new_thread(alice, model="gpt-test"))  # no model listens
    wait_for_status(failed, "failed", timeout=60)
    asks = {**plain, "approve_tools": ["calculator"]}
    waiting = start(watched, headers, new_thread(alice, **asks), "calculate 2 + 2")
    wait_for_status(waiting, "waiting", timeout=60)
    slow = start(watched, headers, new_thread(alice, words=400, delay_ms=20, **plain))
    wait_for_status(slow, "running", timeout=60)
    during = scrape(watched)
    assert value(during, "relay_runs_active", status="waiting") == 1
    assert value(during, "relay_runs_active", status="running") == 1
    for run in (slow, waiting):
        stop = httpx.post(f"{watched.base_url}/api/runs/{run}/stop/", headers=headers)
        assert stop.status_code == 202
        wait_for_status(run, "stopped", timeout=60)
    workflow = Workflow.objects.create(owner=alice, name="W", definition=THREE_STEPS)
    answer = httpx.post(
        f"{watched.base_url}/api/workflows/{workflow.pk}/runs/",
        json={"inputs": {"a": 1}},
        headers=headers,
    )
    assert answer.status_code == 202, answer.text
    wait_for_status(answer.json()["id"], "completed", timeout=60)

    expected = {
        ("agent", "completed"): 1,
        ("agent", "failed"): 1,
        ("agent", "stopped"): 2,
        ("workflow", "completed"): 1,
    }

    def counted():
        after = scrape(watched)
        finished = {
            (kind, status): value(after, "relay_runs_finished_total", kind=kind, trigger="api",
                                  status=status)
            - value(before, "relay_runs_finished_total", kind=kind, trigger="api", status=status)
            for kind in ("agent", "workflow")
            for status in Run.TERMINAL
        }  # fmt: skip
        return after if {k: n for k, n in finished.items() if n} == expected else None

    after = wait_for(counted, timeout=60, message="the runs' ends in the metrics")

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("relay_runs_started_total", kind="agent", trigger="api") == 4
    assert grew("relay_runs_started_total", kind="workflow", trigger="api") == 1
    assert grew("relay_run_duration_seconds_count", kind="agent", status="stopped") == 2
    assert grew("relay_run_duration_seconds_count", kind="agent", status="completed") == 1
    assert grew("relay_run_duration_seconds_count", kind="workflow", status="completed") == 1
    assert grew("relay_run_duration_seconds_sum", kind="agent", status="stopped") > 0
    assert grew("relay_tokens_total", direction="input") > 0
    assert grew("relay_tokens_total", direction="output") > 0
    # the completed agent run's and the workflow's calculator (the waiting one's was not made)
    assert grew("relay_tool_calls_total", tool="calculator", outcome="ok") == 2
    assert grew("relay_tool_call_duration_seconds_count", tool="calculator") == 2
    assert grew("relay_run_time_to_first_event_seconds_count", kind="agent") >= 3
    for status in Run.ACTIVE:
        assert value(after, "relay_runs_active", status=status) == 0
    assert value(after, "relay_queue_length", queue="runs") >= 0
    assert value(after, "relay_metrics_source_up", source="redis") == 1
    assert value(after, "relay_metrics_source_up", source="database") == 1


def test_it_counts_an_open_stream_while_it_is_open(watched, alice):
    headers = bearer(alice)
    run = start(watched, headers, new_thread(alice, words=300, delay_ms=20, model="demo"))
    before = value(scrape(watched), "relay_streams_open")
    with httpx.stream(
        "GET", f"{watched.base_url}/api/runs/{run}/events/", headers=headers, timeout=30
    ) as response:
        lines = response.iter_lines()  # held: dropping it would close the connection
        next(lines)  # the stream is open
        assert value(scrape(watched), "relay_streams_open") == before + 1
        httpx.post(f"{watched.base_url}/api/runs/{run}/stop/", headers=headers)
    wait_for_status(run, "stopped", timeout=60)
    wait_for(
        lambda: value(scrape(watched), "relay_streams_open") == before,
        message="the stream's slot to be freed",
    )


def test_it_answers_404_without_a_token_configured_and_401_to_a_wrong_one(watched, tmp_path):
    closed = Live(tmp_path)  # a web process with no METRICS_TOKEN
    closed.start_web()
    try:
        assert httpx.get(f"{closed.base_url}/metrics").status_code == 404
        wrong = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{closed.base_url}/metrics", headers=wrong).status_code == 404
    finally:
        closed.stop_all()
    url = f"{watched.base_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
