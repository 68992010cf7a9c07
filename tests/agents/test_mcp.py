"""Tests for the MCP client (agents/tools/mcp.py), against the SDK's own servers in
tests/mcp_servers.py: over streamable HTTP on 127.0.0.1, and over stdio."""

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.llm import StopSignal
from agents.tools import mcp

from conftest import wait_for
from mcp_servers import LONG_NAME, TOKEN, HttpServer, self_signed

STDIO_SCRIPT = str(Path(__file__).resolve().parent.parent / "mcp_servers.py")
TOOLS = {"echo", "add", "fail", "hang", "get.weather", LONG_NAME, "mixed", "structured", "big"}


@pytest.fixture
def http_server():
    server = HttpServer().start()
    yield server
    server.stop()


@pytest.fixture
def guarded_server():
    """One that answers 401 to requests without the TOKEN header."""
    server = HttpServer(require_token=True).start()
    yield server
    server.stop()


def over_http(server, **options):
    return mcp.Server("test", "streamable-http", url=server.url, allow_private=True, **options)


def over_stdio(*args, marks=None):
    env = {"MCP_TEST_MARKS": str(marks)} if marks else {}
    return mcp.Server("local", "stdio", command=(sys.executable, STDIO_SCRIPT, *args), env=env)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is ended too: only its parent's wait is missing
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def stop_after(event, stop):
    """Sets `stop` once `event` happened (an Event, or a function that says), in another
    thread; the time it did so comes back."""
    stopped = []

    def target():
        if isinstance(event, threading.Event):
            event.wait(10)
        else:
            wait_for(event, timeout=10, interval=0.01)
        stopped.append(time.monotonic())
        stop.set()

    threading.Thread(target=target, daemon=True).start()
    return stopped


def tasks_on_the_loop():
    """How many tasks the MCP event loop has besides the one that counts them."""

    async def count():
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), mcp._loop.get()).result(5)


def nothing_left_on_the_loop():
    wait_for(lambda: tasks_on_the_loop() == 0, timeout=8, message="the loop's tasks to end")


# listing


def test_it_lists_the_tools_of_a_server_over_streamable_http(http_server):
    tools = {t["tool"]: t for t in mcp.list_tools(over_http(http_server), timeout=5)}
    assert set(tools) == TOOLS
    assert tools["add"]["description"] == "Add two numbers."
    assert tools["add"]["parameters"]["required"] == ["a", "b"]
    assert tools["add"]["parameters"]["properties"]["a"]["type"] == "number"


def test_it_lists_the_tools_of_a_server_over_stdio():
    tools = {t["tool"]: t for t in mcp.list_tools(over_stdio(), timeout=10)}
    assert set(tools) == TOOLS
    assert tools["echo"]["parameters"]["required"] == ["text"]


# calls


def test_it_calls_a_tool_over_streamable_http(http_server):
    assert mcp.call_tool(over_http(http_server), "add", {"a": 2, "b": 3}, timeout=5) == "5.0"


def test_it_calls_a_tool_over_stdio():
    assert mcp.call_tool(over_stdio(), "echo", {"text": "héllo"}, timeout=10) == "héllo"


def test_it_raises_the_text_of_a_tool_that_failed(http_server):
    with pytest.raises(mcp.McpToolError, match="the tool failed on purpose"):
        mcp.call_tool(over_http(http_server), "fail", {}, timeout=5)


def test_it_describes_content_that_is_not_text(http_server):
    assert mcp.call_tool(over_http(http_server), "mixed", {}, timeout=5) == (
        "some text\n[image: image/png, 6 bytes]\n[resource link: https://example.com/a]\nthe notes"
    )


def test_it_gives_structured_content_as_json(http_server):
    text = mcp.call_tool(over_http(http_server), "structured", {}, timeout=5)
    assert text == '{"temperature": 21.5}'


def test_it_cuts_a_long_result(http_server, monkeypatch):
    monkeypatch.setattr(mcp, "MAX_TEXT", 1000)
    text = mcp.call_tool(over_http(http_server), "big", {"size": 5000}, timeout=5)
    assert text == "x" * 1000 + "\n[output truncated: 5000 characters]"


def test_it_refuses_a_response_larger_than_its_bound(http_server, monkeypatch):
    monkeypatch.setattr(mcp, "MAX_RESPONSE", 10_000)
    with pytest.raises(mcp.McpError, match="more than 10000 bytes in one response"):
        mcp.call_tool(over_http(http_server), "big", {"size": 50_000}, timeout=5)


def test_it_times_out_a_call_that_hangs(http_server):
    started = time.monotonic()
    with pytest.raises(mcp.McpTimeoutError, match=r"^timed out after 0\.3 s$"):
        mcp.call_tool(over_http(http_server), "hang", {}, timeout=0.3)
    assert time.monotonic() - started < 1
    # the request was closed, and the server cancelled the tool
    assert http_server.events["hang_cancelled"].wait(5)
    nothing_left_on_the_loop()


def test_it_says_when_a_server_does_not_answer():
    with socket.socket() as sock:  # connections are made, and never accepted nor answered
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        server = mcp.Server("silent", "streamable-http", url, allow_private=True)
        with pytest.raises(mcp.McpTimeoutError) as error:
            mcp.list_tools(server, timeout=0.3)
    assert str(error.value) == f"the MCP server at {url} did not answer within 0.3 s"
    nothing_left_on_the_loop()


def test_a_stop_ends_a_call_over_streamable_http_at_once(http_server):
    stop = StopSignal()
    stopped = stop_after(http_server.events["hang_started"], stop)
    with pytest.raises(mcp.McpStopped, match="the run was stopped"):
        mcp.call_tool(over_http(http_server), "hang", {}, timeout=30, stop=stop)
    assert time.monotonic() - stopped[0] < 0.5
    assert http_server.events["hang_cancelled"].wait(5)
    nothing_left_on_the_loop()


def test_a_stop_ends_a_call_over_stdio_at_once(tmp_path):
    stop = StopSignal()
    stopped = stop_after((tmp_path / "hang").exists, stop)
    with pytest.raises(mcp.McpStopped):
        mcp.call_tool(over_stdio(marks=tmp_path), "hang", {}, timeout=30, stop=stop)
    assert time.monotonic() - stopped[0] < 0.5
    # and the server is stopped, in the background (stdin closed, then SIGTERM after 2 s)
    pid = int((tmp_path / "pid").read_text())
    wait_for(lambda: not alive(pid), timeout=8, message="the stdio server to end")
    nothing_left_on_the_loop()


def test_a_stop_before_the_call_ends_it_at_once(http_server):
    stop = StopSignal()
    stop.set()
    started = time.monotonic()
    with pytest.raises(mcp.McpStopped):
        mcp.call_tool(over_http(http_server), "hang", {}, timeout=30, stop=stop)
    assert time.monotonic() - started < 0.5


def test_calls_from_many_threads_run_side_by_side(http_server):
    server = over_http(http_server)
    results = {}

    def call(i):
        results[i] = mcp.call_tool(server, "echo", {"text": str(i)}, timeout=10)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results == {i: str(i) for i in range(20)}


# what goes wrong, said so that a user can act on it


def test_it_says_when_nothing_listens_at_the_url():
    with socket.socket() as sock:  # a port that was free a moment ago, and closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = mcp.Server(
        "down", "streamable-http", f"http://127.0.0.1:{port}/mcp", allow_private=True
    )
    with pytest.raises(mcp.McpError) as error:
        mcp.list_tools(server, timeout=5)
    assert str(error.value) == (
        f"cannot reach the MCP server at http://127.0.0.1:{port}/mcp: connection refused"
    )


def test_it_says_when_what_listens_at_the_url_hangs_up_without_answering():
    with socket.socket() as listener:  # accepts, reads the request, closes: not HTTP
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up():
            for _ in range(3):  # the SDK may try more than once
                connection, _ = listener.accept()
                connection.recv(65536)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        with pytest.raises(mcp.McpError) as error:
            mcp.list_tools(mcp.Server("odd", "streamable-http", url, allow_private=True), timeout=5)
    # a reset, or an end without an answer, as the timing has it: either way in words
    assert str(error.value) in (
        f"cannot reach the MCP server at {url}: connection reset by peer",
        f"the connection to the MCP server at {url} broke: Server disconnected without sending"
        " a response.",
    )


def test_it_refuses_a_private_address_unless_allowed(http_server, settings):
    settings.MCP_ALLOW_PRIVATE = False
    server = mcp.Server("test", "streamable-http", http_server.url)
    with pytest.raises(mcp.McpError) as error:
        mcp.list_tools(server, timeout=5)
    assert str(error.value) == (
        f"the URL {http_server.url} resolves to 127.0.0.1, which is not a public address"
        " (set MCP_ALLOW_PRIVATE=1 to allow it)"
    )

    settings.MCP_ALLOW_PRIVATE = True
    server = mcp.Server("test", "streamable-http", http_server.url)
    assert len(mcp.list_tools(server, timeout=5)) == len(TOOLS)


def test_it_refuses_a_name_that_resolves_to_a_private_address(http_server):
    url = f"http://localhost:{http_server.port}/mcp"
    server = mcp.Server("test", "streamable-http", url, allow_private=False)
    with pytest.raises(
        mcp.McpError, match=r"resolves to (127\.0\.0\.1|::1), which is not a public"
    ):
        mcp.list_tools(server, timeout=5)


def test_it_connects_to_the_addresses_it_checked_and_looks_up_no_other(http_server, monkeypatch):
    # A second lookup could answer an internal address (DNS rebinding): there is none.
    lookups = []
    getaddrinfo = socket.getaddrinfo

    def first_answer_only(host, *args, **kwargs):
        if host == "localhost":
            lookups.append(host)
            if len(lookups) > 1:
                raise AssertionError("looked up again")
            host = "127.0.0.1"
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", first_answer_only)
    url = f"http://localhost:{http_server.port}/mcp"
    server = mcp.Server("test", "streamable-http", url, allow_private=True)
    assert mcp.call_tool(server, "echo", {"text": "pinned"}, timeout=5) == "pinned"
    assert lookups == ["localhost"]


def test_it_checks_the_certificate_against_the_host_not_the_address(tmp_path, monkeypatch):
    certificate, key = self_signed(tmp_path, "localhost")
    monkeypatch.setattr(mcp, "_tls", lambda: ssl.create_default_context(cafile=certificate))
    server = HttpServer(tls=(certificate, key)).start()
    try:
        url = f"https://localhost:{server.port}/mcp"
        by_name = mcp.Server("test", "streamable-http", url, allow_private=True)
        assert mcp.call_tool(by_name, "echo", {"text": "over TLS"}, timeout=5) == "over TLS"

        by_address = mcp.Server("test", "streamable-http", server.url, allow_private=True)
        with pytest.raises(mcp.McpError) as error:
            mcp.call_tool(by_address, "echo", {"text": "over TLS"}, timeout=5)
        assert str(error.value).startswith(
            f"cannot reach the MCP server at {server.url}: its certificate is refused:"
        )
        assert "127.0.0.1" in str(error.value)
    finally:
        server.stop()


def test_it_does_not_follow_a_redirect_to_another_server(http_server):
    redirecting = HttpServer(redirect_to=f"http://localhost:{http_server.port}/mcp").start()
    try:
        server = mcp.Server("test", "streamable-http", redirecting.url, allow_private=True)
        with pytest.raises(mcp.McpError, match="not followed"):
            mcp.list_tools(server, timeout=5)
    finally:
        redirecting.stop()


@pytest.mark.parametrize("url", ["ftp://example.com/mcp", "file:///etc/passwd", "example.com"])
def test_it_refuses_other_schemes(url):
    with pytest.raises(mcp.McpError, match="must begin with http:// or https://"):
        mcp.list_tools(mcp.Server("test", "streamable-http", url), timeout=5)


def test_it_gives_the_status_of_a_refusal_and_never_the_headers(guarded_server):
    wrong = "Bearer wrong-secret"
    with pytest.raises(mcp.McpError) as error:
        mcp.list_tools(over_http(guarded_server, headers={"Authorization": wrong}), timeout=5)
    assert str(error.value) == (
        f"the MCP server at {guarded_server.url} answered 401 Unauthorized:"
        ' {"error": "invalid_token"}'
    )
    assert "wrong-secret" not in repr(over_http(guarded_server, headers={"Authorization": wrong}))

    server = over_http(guarded_server, headers={"Authorization": TOKEN})
    assert mcp.call_tool(server, "echo", {"text": "let in"}, timeout=5) == "let in"


def test_it_gives_the_status_of_a_url_that_is_not_an_mcp_server(http_server):
    url = http_server.url.replace("/mcp", "/elsewhere")
    server = mcp.Server("test", "streamable-http", url, allow_private=True)
    with pytest.raises(mcp.McpError, match=f"^the MCP server at {url} answered 404 Not Found"):
        mcp.list_tools(server, timeout=5)


def test_it_keeps_the_query_and_password_of_the_url_out_of_its_messages():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:password@127.0.0.1:{port}/mcp?key=secret"
    with pytest.raises(mcp.McpError) as error:
        mcp.list_tools(mcp.Server("t", "streamable-http", url, allow_private=True), timeout=5)
    assert "password" not in str(error.value) and "secret" not in str(error.value)
    assert f"http://127.0.0.1:{port}/mcp" in str(error.value)


def test_it_says_what_a_stdio_server_that_exited_wrote():
    with pytest.raises(mcp.McpError) as error:
        mcp.list_tools(over_stdio("exit"), timeout=10)
    assert str(error.value) == (
        f"the command {sys.executable} exited: cannot start: the configuration is missing"
    )


def test_it_says_what_a_server_answers_to_an_unknown_tool(http_server):
    with pytest.raises(mcp.McpError, match="nope"):
        mcp.call_tool(over_http(http_server), "nope", {}, timeout=5)


def test_it_says_what_a_stdio_server_answers_to_an_unknown_tool():
    with pytest.raises(mcp.McpError) as error:
        mcp.call_tool(over_stdio(), "nope", {}, timeout=10)
    assert "exited" not in str(error.value) and "nope" in str(error.value)


def test_it_says_when_a_stdio_command_does_not_exist():
    server = mcp.Server("local", "stdio", command=("/nonexistent/mcp-server",))
    with pytest.raises(mcp.McpError, match=r"^cannot start the command /nonexistent/mcp-server: "):
        mcp.list_tools(server, timeout=5)


def test_a_stdio_server_gets_the_env_it_is_given_and_not_the_workers(monkeypatch):
    monkeypatch.setenv("RELAY_TEST_SECRET", "worker-secret")
    script = (
        "import os, sys; print(os.environ.get('GIVEN'), os.environ.get('RELAY_TEST_SECRET'),"
        " file=sys.stderr)"
    )
    server = mcp.Server(
        "local", "stdio", command=(sys.executable, "-c", script), env={"GIVEN": "given"}
    )
    with pytest.raises(mcp.McpError, match=r"exited: given None$"):
        mcp.list_tools(server, timeout=10)


# names the model sees


def test_it_calls_a_tool_whose_name_the_model_cannot_use(http_server):
    server = over_http(http_server)
    names = mcp.model_names("test", [t["tool"] for t in mcp.list_tools(server, timeout=5)])
    assert names["test__echo"] == "echo"
    weather = next(name for name, tool in names.items() if tool == "get.weather")
    assert re.fullmatch(r"test__get_weather_[0-9a-f]{8}", weather)
    assert mcp.call_tool(server, names[weather], {"city": "Paris"}, timeout=5) == "sunny in Paris"
    long = next(name for name, tool in names.items() if tool == LONG_NAME)
    assert len(long) == 64
    assert mcp.call_tool(server, names[long], {}, timeout=5) == "long"


def test_model_names_follow_the_providers_rule_and_never_collide():
    tools = ["a.b", "a_b", "a b", "x" * 80, "x" * 81, "ok-name", "émoji🙂", "line\n", ""]
    names = mcp.model_names("my server", tools)
    assert sorted(names.values()) == sorted(tools)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) for name in names)

    names = mcp.model_names("srv", tools)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) for name in names)
    assert names["srv__a_b"] == "a_b"  # a valid name stays as it is
    assert names["srv__ok-name"] == "ok-name"
    assert len(names) == len(tools)


def test_model_names_stay_unique_when_their_hashes_begin_alike(monkeypatch):
    sha256 = hashlib.sha256

    class Digest:  # every name's hash begins with the same 16 digits
        def __init__(self, data):
            self.data = data

        def hexdigest(self):
            return "0" * 16 + sha256(self.data).hexdigest()[16:]

    monkeypatch.setattr(mcp.hashlib, "sha256", Digest)
    names = mcp.model_names("srv", ["a.b", "a,b", "a;b"])
    assert sorted(names.values()) == ["a,b", "a.b", "a;b"]
    assert all(len(name) <= 64 for name in names)


def test_model_names_are_the_same_in_any_order_and_any_process():
    tools = ["get.weather", "get_weather", "y" * 70]
    assert mcp.model_names("srv", tools) == mcp.model_names("srv", list(reversed(tools)))
    # a hash of the name, not Python's salted hash(): the same in every worker
    assert mcp.model_names("srv", ["get.weather"]) == {"srv__get_weather_7af1c8ab": "get.weather"}
