"""The OpenAPI schema (/api/schema/), its docs page (/api/docs/), and a schemathesis run against
the live web process: no 5xx, and every response as the schema says."""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import schemathesis
from django.test import Client
from rest_framework.test import APIClient

from agents.models import McpServer, Provider, create_thread
from agents.services import agent_start
from config import urls
from runs import http, stream
from runs.openapi import EVENTS
from scheduling.models import Schedule
from webhooks.services import endpoint_create
from workflows.models import Workflow
from workflows.services import workflow_start

from conftest import bearer, start_live

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"

# The fuzzer's bounds: examples per operation, seconds per request and for the whole run (a bound
# for a hang, not a measure: the run grows with the API and slows with a busy machine).
MAX_EXAMPLES = 50
REQUEST_TIMEOUT = 10
RUN_TIMEOUT = 420

DIVIDE = {
    "inputs": [{"name": "by", "type": "number", "required": True}],
    "steps": [
        {"id": "divide", "type": "tool", "tool": "calculator",
         "arguments": {"expression": "1 / {{ inputs.by }}"}},
    ],
}  # fmt: skip


def fetch_schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200, response.content
    return response.json()


def documented_paths():
    """Every route of the API's URLconf, written as the schema writes paths."""
    for pattern in urls.api:
        if pattern.callback is http.not_found:
            continue
        route = str(pattern.pattern).strip("^$")
        route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)  # the router's regexes
        route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)  # path()'s converters
        yield "/api/" + route.replace("{pk}", "{id}")


@pytest.mark.django_db
def test_it_serves_a_valid_openapi_3_schema_of_every_endpoint_without_login():
    schema = fetch_schema(APIClient())
    assert schema["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(schema).validate()  # raises for an invalid OpenAPI document
    expected = set(documented_paths()) - {"/api/schema/", "/api/docs/"}
    assert expected - set(schema["paths"]) == set(), "routes missing from the schema"


@pytest.mark.django_db
def test_an_api_url_that_names_no_endpoint_is_a_json_404(alice_api):
    for url in ("/api/threads/0.5/", "/api/runs/not-a-uuid/events/", "/api/nothing/here/"):
        response = alice_api.get(url)
        assert response.status_code == 404, url
        assert response.json() == {"detail": "Not found."}, url
    response = Client(enforce_csrf_checks=True).delete("/api/agents/0.5/")
    assert (response.status_code, response.json()) == (404, {"detail": "Not found."})


@pytest.mark.django_db
def test_the_event_stream_takes_only_get(alice_api):
    response = alice_api.post(f"/api/runs/{uuid.uuid4()}/events/")
    assert response.status_code == 405
    assert response["Allow"] == "GET"


@pytest.mark.django_db
def test_the_schema_gives_the_error_shapes():
    paths = fetch_schema(APIClient())["paths"]
    start = paths["/api/threads/{id}/runs/"]["post"]["responses"]
    assert {"202", "400", "401", "404", "409", "429", "503"} <= set(start)
    assert "thread_busy" in start["409"]["description"]
    assert start["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationError"
    }
    assert paths["/api/threads/{id}/"]["delete"]["responses"]["409"]


@pytest.mark.django_db
def test_the_schema_describes_the_event_stream_and_every_event_type():
    operation = fetch_schema(APIClient())["paths"]["/api/runs/{run_id}/events/"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    documented = {"stream-open", "stream-reset"}
    for doc in ("README.md", "docs/runs.md", "docs/workflows.md"):
        for table in re.findall(
            r"^\| type \| data \|\n(?:\|.*\n)+", (ROOT / doc).read_text(), re.M
        ):
            documented |= set(re.findall(r"^\| `([\w.-]+)` \|", table, re.M))
    assert len(documented) > 8
    assert documented - set(EVENTS) == set(), "event types missing from the schema"
    for event in EVENTS:
        assert f"| `{event}` |" in operation["description"]


@pytest.mark.django_db
def test_the_docs_page_needs_no_cdn(settings):
    settings.DEBUG = False  # as in production
    client = APIClient()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "://" not in html, "the docs page names another origin"
    assert '"validatorUrl": null' in html  # else Swagger UI asks validator.swagger.io
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3, assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        b"".join(response.streaming_content)


# The fuzzer's run: schemathesis's CLI generates requests for every operation of the live
# server's schema, valid and invalid ones, as alice; tests/schemathesis_hooks.py makes about half
# of them name her own objects instead of ids that do not exist.


@pytest.fixture
def fuzzed(transactional_db, tmp_path):
    """Web and worker processes of the run's own: schemathesis sends wrong keys on purpose (to
    see that every operation refuses them), and the throttle on failed authentication would
    soon answer everything 429. The failures it counted go after it, so that they throttle no
    later test (the same address, the same Redis)."""
    # a fuzzed MCP server's URL may name an address that never answers: refresh waits 3 s, not 10
    processes = start_live(tmp_path, AUTH_FAILURE_LIMIT=str(10**9), MCP_LIST_TIMEOUT="3")
    yield processes
    processes.stop_all()
    client = stream.client()
    for key in client.scan_iter("relay:auth-failures:*"):
        client.delete(key)


@pytest.mark.e2e
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_the_live_api_answers_as_its_schema_says(fuzzed, alice, tmp_path):
    thread = create_thread(owner=alice, agent=alice.agents.get())
    agent_start(user=alice, thread=thread, message="Hello")
    workflow = Workflow.objects.create(owner=alice, name="Divide", definition=DIVIDE)
    workflow_start(user=alice, workflow=workflow, inputs={"by": 0})  # fails: one to retry
    Schedule.objects.create(
        owner=alice, name="Hourly", target="agent", agent=alice.agents.get(), prompt="Hi",
        cron="0 * * * *",
    )  # fmt: skip
    provider = Provider.objects.create(owner=alice, name="P", base_url="http://127.0.0.1:9/v1")
    server = McpServer.objects.create(owner=alice, name="m", url="http://127.0.0.1:9/mcp")
    endpoint = endpoint_create(owner=alice, url="http://127.0.0.1:9/hook", events=["run.failed"])
    owned = {
        "providers": [provider.pk],
        "mcp-servers": [server.pk],
        "agents": list(alice.agents.values_list("pk", flat=True)),
        "threads": list(alice.threads.values_list("pk", flat=True)),
        "runs": [str(pk) for pk in alice.runs.values_list("pk", flat=True)],
        "workflows": list(alice.workflows.values_list("pk", flat=True)),
        "schedules": list(alice.schedules.values_list("pk", flat=True)),
        "webhooks": [endpoint.pk],
    }
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": str(ROOT / "tests"),
        "RELAY_FUZZ_OWNED": json.dumps(owned),
    }
    command = [
        str(Path(sys.executable).parent / "st"), "run", f"{fuzzed.base_url}/api/schema/",
        "--header", f"Authorization: {bearer(alice)['Authorization']}",
        "--max-examples", str(MAX_EXAMPLES), "--request-timeout", str(REQUEST_TIMEOUT),
        # Not checked: that the server refuses all the schema calls invalid and takes all it
        # calls valid. DRF takes "1" for 1 and ignores a bad page_size, and no schema says which
        # ids exist or which cron expressions parse. Not generated: session cookies (random ones
        # beside a valid token look to schemathesis like an API that ignores its auth).
        "--exclude-checks", "positive_data_acceptance,negative_data_rejection",
        "--generation-with-security-parameters", "false",
        # Revoking the key the run authenticates with would leave it nothing but 401s.
        "--exclude-operation-id", "keys_destroy",
        # A thread's stream stays open until the client leaves: every request would wait out
        # the request timeout (tests/runs/test_thread_stream.py tests it).
        "--exclude-operation-id", "threads_events",
        # One worker: with more, alice's requests race each other (a PATCH beside the DELETE of
        # the same object), which finds races, not bad input, and schemathesis 4.32 itself
        # sometimes fails with a KeyError in its coverage phase.
        "--workers", "1", "--generation-database", "none", "--no-color",
    ]  # fmt: skip
    web_log = fuzzed.logs / "web.log"
    seen = web_log.stat().st_size
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    with web_log.open(errors="replace") as log:
        log.seek(seen)
        errors = re.split(r"^Internal Server Error: ", log.read(), flags=re.M)[1:]
    report = f"{time.monotonic() - started:.0f} s\n{result.stdout}{result.stderr}"
    report += "".join(f"\nThe web process's 500 at {e[:200]}...{e[-1500:]}" for e in errors[:10])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(report)
    assert result.returncode == 0, report[-30_000:]
