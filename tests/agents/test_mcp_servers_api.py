"""MCP servers in the API and in runs: owner only, write-only headers, the URL's address rules,
stdio refused to users, listing and refreshing against a real MCP server (the SDK's own, over
streamable HTTP), and a run whose agent calls one of its tools through a real worker."""

import sys
import threading
import time
from pathlib import Path

import pytest

from agents import services, toolbox
from agents.models import McpServer
from runs import lifecycle, loop
from runs.models import Run

from conftest import logged, new_thread, start, wait_for_status
from mcp_servers import TOKEN, HttpServer
from sse import follow, text_of

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def mcp_server():
    server = HttpServer(require_token=True).start()
    yield server
    server.stop()


@pytest.fixture
def private_ok(settings):
    settings.MCP_ALLOW_PRIVATE = True


def add(api, url, **fields):
    body = {"name": "weather", "url": url, "headers": {"Authorization": TOKEN}, **fields}
    return api.post("/api/mcp-servers/", body, format="json")


def test_refresh_lists_the_tools_as_the_model_sees_them(alice_api, mcp_server, private_ok):
    r = add(alice_api, mcp_server.url)
    assert r.status_code == 201, r.data
    assert TOKEN not in r.content.decode()
    assert r.data["header_names"] == ["Authorization"] and r.data["tools"] == []
    r = alice_api.post(f"/api/mcp-servers/{r.data['id']}/refresh/")
    assert r.status_code == 200, r.data
    by_tool = {tool["tool"]: tool for tool in r.data["tools"]}
    assert by_tool["echo"]["name"] == "weather__echo"
    assert by_tool["echo"]["parameters"]["properties"]["text"]["type"] == "string"
    assert by_tool["echo"]["description"] == "Repeat the text."
    renamed = by_tool["get.weather"]["name"]
    assert renamed.startswith("weather__get") and "." not in renamed
    assert all(len(tool["name"]) <= 64 for tool in r.data["tools"])


def test_a_server_that_is_down_answers_424_with_what_to_do(alice_api, private_ok):
    r = add(alice_api, "http://127.0.0.1:9/mcp")
    r = alice_api.post(f"/api/mcp-servers/{r.data['id']}/refresh/")
    assert r.status_code == 424 and r.data["code"] == "mcp_unreachable"
    assert "cannot reach" in r.data["detail"] and "127.0.0.1:9" in r.data["detail"]
    assert McpServer.objects.get().tools_error == r.data["detail"]


def test_a_wrong_token_is_an_error_the_user_can_act_on(alice_api, mcp_server, private_ok):
    r = add(alice_api, mcp_server.url, headers={"Authorization": "Bearer wrong"})
    r = alice_api.post(f"/api/mcp-servers/{r.data['id']}/refresh/")
    assert r.status_code == 424 and "401" in r.data["detail"], r.data
    assert "wrong" not in r.data["detail"]


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"url": "http://127.0.0.1:8000/mcp"}, "url", "MCP_ALLOW_PRIVATE"),
        ({"url": "http://169.254.169.254/mcp"}, "url", "not a public address"),
        ({"url": "https://8.8.8.8/mcp", "transport": "stdio"}, "transport", "not a valid choice"),
        ({"url": "https://8.8.8.8/mcp", "name": "two words"}, "name", "letters, digits"),
        ({"url": "file:///etc/passwd"}, "url", "valid URL"),
    ],
)
def test_bad_servers_are_refused_with_the_field_and_reason(alice_api, body, field, reason):
    r = alice_api.post("/api/mcp-servers/", {"name": "s", **body}, format="json")
    assert r.status_code == 400
    assert reason in str(r.data[field]), r.data
    assert not McpServer.objects.exists()


def test_another_users_server_is_not_found_nor_usable(alice_api, bob_api):
    r = add(alice_api, "https://8.8.8.8/mcp")
    server = r.data["id"]
    assert bob_api.get(f"/api/mcp-servers/{server}/").status_code == 404
    assert bob_api.post(f"/api/mcp-servers/{server}/refresh/").status_code == 404
    r = bob_api.post("/api/agents/", {"name": "B", "mcp_servers": [server]}, format="json")
    assert r.status_code == 400 and "mcp_servers" in r.data


def test_an_administrators_stdio_server_cannot_be_changed_through_the_api(alice, alice_api):
    server = McpServer.objects.create(owner=alice, name="local", transport="stdio",
                                      command=["python", "server.py"])  # fmt: skip
    r = alice_api.patch(f"/api/mcp-servers/{server.pk}/", {"enabled": False}, format="json")
    assert r.status_code == 400 and "administrator" in str(r.data["transport"])


@pytest.mark.django_db(transaction=True)  # as in the worker: its steps close the connection
def test_the_agent_sees_only_the_allowed_tools_of_its_enabled_servers(
    alice, alice_api, mcp_server, private_ok
):
    r = add(alice_api, mcp_server.url, allowed_tools=["echo", "add"])
    server = McpServer.objects.get(pk=r.data["id"])
    agent = alice.agents.get()
    agent.mcp_servers.add(server)
    box = toolbox.for_agent(agent)  # lists the server: its list was never made
    assert [name for name in box if "__" in name] == ["weather__echo", "weather__add"]
    assert box["weather__echo"].server == "weather"
    server.enabled = False
    server.save()
    assert not any("__" in name for name in toolbox.for_agent(agent))


def test_a_changed_url_makes_the_list_stale(alice_api, mcp_server, private_ok):
    r = add(alice_api, mcp_server.url)
    alice_api.post(f"/api/mcp-servers/{r.data['id']}/refresh/")
    r = alice_api.patch(f"/api/mcp-servers/{r.data['id']}/", {"url": "http://127.0.0.1:9/mcp"},
                        format="json")  # fmt: skip
    assert r.status_code == 200 and r.data["tools"] == [] and r.data["tools_refreshed"] is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_run_calls_an_mcp_tool_through_a_real_worker(live, live_api, alice, mcp_server):
    server = McpServer.objects.create(owner=alice, name="weather", url=mcp_server.url,
                                      headers={"Authorization": TOKEN})  # fmt: skip
    thread = new_thread(alice)
    alice.agents.get().mcp_servers.add(server)
    run_id = start(live, live_api, thread, '/tool weather__echo {"text": "hello from MCP"}')
    events = follow(live.base_url, run_id, live_api)
    started = next(e.json for e in events if e.type == "tool.started")
    done = next(e.json for e in events if e.type == "tool.done")
    assert (started["name"], started["server"]) == ("weather__echo", "weather")
    assert (done["output"], done["error"], done["server"]) == ("hello from MCP", None, "weather")
    assert text_of(events) == "The weather__echo tool answered: hello from MCP"
    assert events[-1].json["status"] == "completed"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_queue")
def test_a_stop_during_an_mcp_call_ends_the_run_at_once_and_cancels_the_call(
    alice, mcp_server, private_ok
):
    server = McpServer.objects.create(owner=alice, name="slow", url=mcp_server.url,
                                      headers={"Authorization": TOKEN})  # fmt: skip
    thread = new_thread(alice)
    alice.agents.get().mcp_servers.add(server)
    run = services.agent_start(user=alice, thread=thread, message="/tool slow__hang")
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    assert mcp_server.events["hang_started"].wait(10)
    started = time.monotonic()
    lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
    wait_for_status(run.pk, Run.Status.STOPPED, timeout=5)
    assert time.monotonic() - started < 1
    worker.join(5)
    assert mcp_server.events["hang_cancelled"].wait(5)  # the server saw its request go
    done = next(data for _, kind, data in logged(run) if kind == "tool.done")
    assert done["error"] == "the run was stopped before the tool finished"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_queue")
def test_a_run_calls_an_administrators_stdio_server(alice):
    server = McpServer.objects.create(
        owner=alice, name="local", transport="stdio",
        command=[sys.executable, str(Path(__file__).parent.parent / "mcp_servers.py")],
    )  # fmt: skip
    thread = new_thread(alice)
    alice.agents.get().mcp_servers.add(server)
    run = services.agent_start(
        user=alice, thread=thread, message='/tool local__add {"a": 2, "b": 3}'
    )
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    done = next(data for _, kind, data in logged(run) if kind == "tool.done")
    assert (done["name"], done["output"], done["server"]) == ("local__add", "5.0", "local")
