"""Tests for the agent tool registry and the built-in tools."""

import json
import socket
import socketserver
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents import tools
from agents.llm import StopSignal
from agents.tools import addresses, builtin

from conftest import wait_for

ALL = tools.names()


def run(name, arguments, allowed=None, user="alice", run_id="alice-run", stop=None):
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    allowed = ALL if allowed is None else allowed
    return tools.call(name, arguments, allowed=allowed, user=user, run=run_id, stop=stop)


def calc(expression):
    return run("calculator", {"expression": expression})


@pytest.fixture
def temporary_tools():
    """Registers tools for one test with tools.register, and removes them afterwards."""
    added = []

    def add(name, func, **options):
        tools.register(name, f"test tool {name}", {"type": "object"}, **options)(func)
        added.append(name)

    yield add
    for name in added:
        tools.unregister(name)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # Echoes the Host header, which must name the host even though the address was pinned.
        body = f"hello from {self.headers['Host']}{self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    """Base URL of an HTTP server on 127.0.0.1, named as localhost."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class DripServer(socketserver.ThreadingTCPServer):
    """Answers every request with a status line, then one header byte every half second for up
    to 20 s: each read gets a byte well within any socket timeout, so only a deadline on the
    whole request ends it."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self):
        super().__init__(("127.0.0.1", 0), DripHandler)
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0


class DripHandler(socketserver.BaseRequestHandler):
    def handle(self):
        with self.server.lock:
            self.server.connections += 1
        self.request.recv(65536)
        try:
            self.request.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(40):
                if self.server.closing.wait(0.5):
                    return
                self.request.sendall(b"x")
        except OSError:  # the client gave up
            pass


@pytest.fixture
def drip_server(settings):
    """URL of a DripServer that http_get may reach."""
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["localhost"]
    settings.TOOLS_HTTP_ALLOW_PRIVATE = True
    server = DripServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://localhost:{server.server_address[1]}/"
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def blocking_tool(temporary_tools):
    """A tool `wait` that returns "released" once the test sets the event it yields."""
    release = threading.Event()
    temporary_tools("wait", lambda: release.wait(10) and "released", timeout=0.3)
    yield release
    release.set()  # let the abandoned calls finish, and give back their slots
    wait_for(lambda: not any(t.name == "tool-wait" for t in threading.enumerate()), timeout=5)


# registry


def test_it_lists_the_built_in_tools():
    assert {"calculator", "current_time", "http_get"} <= set(tools.names())
    assert tools.names() == sorted(tools.names())
    assert tools.get("calculator").timeout == 10


def test_it_gives_schemas_in_the_openai_function_format():
    [schema] = tools.schemas(["calculator"])
    assert schema["type"] == "function"
    assert schema["function"]["name"] == "calculator"
    assert schema["function"]["description"]
    assert schema["function"]["parameters"]["required"] == ["expression"]


def test_it_gives_schemas_only_for_known_tools_in_the_order_asked():
    schemas = tools.schemas(["http_get", "no_such_tool", "calculator"])
    assert [s["function"]["name"] for s in schemas] == ["http_get", "calculator"]


def test_it_refuses_a_tool_the_agent_is_not_allowed():
    result = run("calculator", {"expression": "1"}, allowed=["current_time"])
    assert result == tools.ToolResult(None, "tool 'calculator' is not allowed for this agent")


def test_it_reports_an_unknown_tool():
    result = run("no_such_tool", {}, allowed=["no_such_tool"])
    assert result.output is None
    assert "unknown tool 'no_such_tool'" in result.error


def test_it_reports_arguments_that_are_not_json():
    result = run("calculator", '{"expression": ')
    assert result.output is None
    assert result.error.startswith("arguments are not valid JSON")


def test_it_reports_arguments_that_are_not_an_object():
    result = run("calculator", "[1, 2]")
    assert result.error == "arguments must be a JSON object, not list"


def test_it_names_the_missing_field():
    assert run("calculator", {}).error == "arguments: 'expression' is a required property"


def test_it_names_the_field_of_the_wrong_type():
    assert run("calculator", {"expression": 5}).error == (
        "arguments.expression: 5 is not of type 'string'"
    )


def test_it_turns_an_exception_into_an_error(temporary_tools):
    def explode():
        raise ValueError("boom")

    temporary_tools("explode", explode)
    assert run("explode", {}, allowed=["explode"]) == tools.ToolResult(None, "ValueError: boom")


def test_it_gives_up_on_a_tool_past_its_timeout(temporary_tools):
    release = threading.Event()
    temporary_tools("slow", lambda: release.wait(10), timeout=0.2)
    try:
        started = time.monotonic()
        result = run("slow", {}, allowed=["slow"])
        elapsed = time.monotonic() - started
    finally:
        release.set()  # let the abandoned thread finish
    assert result == tools.ToolResult(None, "timed out after 0.2 s")
    assert elapsed < 2


def test_it_truncates_long_output(temporary_tools):
    temporary_tools("chatty", lambda: "x" * 1000, max_output=100)
    result = run("chatty", {}, allowed=["chatty"])
    assert result.output == "x" * 100 + "\n[output truncated: 1000 characters]"


def test_it_returns_json_for_values_that_are_not_text(temporary_tools):
    temporary_tools("structured", lambda: {"a": [1, 2]})
    assert run("structured", {}, allowed=["structured"]).output == '{"a": [1, 2]}'


# isolation: one user's or one run's calls cannot delay another's


def test_it_keeps_one_users_slow_calls_from_delaying_another_users(drip_server, monkeypatch):
    monkeypatch.setattr(builtin, "HTTP_DEADLINE", 3, raising=False)
    bound = 16  # TOOLS_MAX_CALLS_PER_USER's default
    results = []

    def slow_call(i):
        started = time.monotonic()
        result = run("http_get", {"url": drip_server.url}, run_id=f"alice-run-{i}")
        results.append((result, time.monotonic() - started))

    callers = [threading.Thread(target=slow_call, args=(i,)) for i in range(50)]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: drip_server.connections >= bound, timeout=5, message="the slow calls")
        started = time.monotonic()
        result = run("calculator", {"expression": "6*7"}, user="bob", run_id="bob-run")
        elapsed = time.monotonic() - started
    finally:
        for caller in callers:
            caller.join(10)
    assert result == tools.ToolResult("42", None)
    assert elapsed < 0.5
    # alice's calls beyond her bound were refused at once, the others ended at the deadline
    refused = [(r, t) for r, t in results if r.error and "too many tool calls" in r.error]
    assert len(refused) == 50 - bound
    assert refused[0][0].error == (
        f"too many tool calls in progress for this user (at most {bound} at once):"
        " wait for one to finish"
    )
    assert max(t for _, t in refused) < 1
    assert drip_server.connections == bound
    slow = [r.error for r, _ in results if "too many tool calls" not in r.error]
    assert slow == ["TimeoutError: the server did not answer within 3 s"] * bound


def test_it_bounds_the_calls_of_one_run_and_not_its_users_other_runs(blocking_tool, settings):
    settings.TOOLS_MAX_CALLS_PER_RUN = 2
    for _ in range(2):
        assert run("wait", {}, allowed=["wait"]).error == "timed out after 0.3 s"
    started = time.monotonic()
    assert run("wait", {}, allowed=["wait"]).error == (
        "too many tool calls in progress for this run (at most 2 at once): wait for one to finish"
    )
    assert time.monotonic() - started < 0.1
    assert run("calculator", {"expression": "1+1"}, run_id="alice-other-run").output == "2"


def test_a_call_that_timed_out_holds_its_slot_until_its_tool_returns(blocking_tool, settings):
    settings.TOOLS_MAX_CALLS_PER_RUN = 1
    assert run("wait", {}, allowed=["wait"]).error == "timed out after 0.3 s"
    assert "too many tool calls" in run("calculator", {"expression": "1"}).error
    blocking_tool.set()
    wait_for(lambda: run("calculator", {"expression": "1"}).output == "1", timeout=2)


def test_the_timeout_counts_the_tools_own_time_only(temporary_tools):
    # 40 calls of other users still running (more than a shared pool of 32 threads held)
    release, running = threading.Event(), []
    temporary_tools("hold", lambda: running.append(1) or release.wait(10), timeout=10)
    temporary_tools("quick", lambda: time.sleep(0.2) or "done", timeout=0.4)
    callers = [
        threading.Thread(target=run, args=("hold", {}, ["hold"], f"user-{i}", f"run-{i}"))
        for i in range(40)
    ]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: len(running) == 40, timeout=5, message="the other calls")
        assert run("quick", {}, allowed=["quick"]) == tools.ToolResult("done", None)
    finally:
        release.set()
        for caller in callers:
            caller.join(5)


def test_it_stops_waiting_for_a_tool_when_the_run_is_stopped(blocking_tool):
    stop = StopSignal()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert run("wait", {}, allowed=["wait"], stop=stop).error == "the run was stopped"
    assert time.monotonic() - started < 0.25


# calculator


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 * (3 + 4)", 14),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("-3 + +5", 2),
        ("-(2 - 5)", 3),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("0.1 * 3", 0.30000000000000004),
        ("2 ** 10", 1024),
        ("2 ^ 10", 1024),
        ("-2 ** 2", -4),
        ("2 ** -1", 0.5),
        ("1.5e3", 1500.0),
    ],
)
def test_it_calculates(expression, value):
    result = calc(expression)
    assert result.error is None
    assert json.loads(result.output) == value
    assert type(json.loads(result.output)) is type(value)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("x + 1", "ValueError: names are not allowed: x"),
        ("abs(-1)", "ValueError: function calls are not allowed: abs(-1)"),
        ("(1).real", "ValueError: attribute access is not allowed: 1 .real"),
        ("().__class__", "ValueError: attribute access is not allowed: ().__class__"),
        ("'a' * 3", "ValueError: only numbers are allowed: 'a'"),
        ("True + 1", "ValueError: only numbers are allowed: True"),
        ("1 << 3", "ValueError: this operator is not allowed: 1 << 3"),
        ("1 < 2", "ValueError: only numbers, arithmetic operators and parentheses are allowed"),
        ("1 / 0", "ValueError: division by zero"),
        ("1 % 0", "ValueError: division by zero"),
        ("2 ** 1001", "ValueError: the exponent is too large (at most 1000)"),
        ("10 ** 1000", "ValueError: the result is too large (more than 1000 digits)"),
        ("(9 ** 999) ** 999", "ValueError: the result is too large (more than 1000 digits)"),
        ("(10 ** 999) * (10 ** 999)", "ValueError: the result is too large"),
        ("1e308 * 10", "ValueError: the result is too large"),
        ("(-8) ** 0.5", "ValueError: the result is not a real number"),
        ("1 +", "ValueError: not an arithmetic expression"),
        ("1" + " + 1" * 200, "ValueError: expression is too long (at most 500 characters)"),
    ],
)
def test_it_refuses_what_is_not_arithmetic(expression, error):
    result = calc(expression)
    assert result.output is None
    assert result.error.startswith(error)


def test_it_refuses_a_call_even_when_the_name_is_not_the_problem():
    assert calc("(lambda: 1)()").error.startswith("ValueError: function calls are not allowed")


# current_time


def test_it_tells_the_time_in_a_zone():
    value = json.loads(run("current_time", {"timezone": "Asia/Kolkata"}).output)
    assert value["timezone"] == "Asia/Kolkata"
    assert value["iso"].endswith("+05:30")
    assert value["weekday"] == datetime.fromisoformat(value["iso"]).strftime("%A")


def test_it_tells_the_time_in_utc_by_default():
    value = json.loads(run("current_time", "").output)
    assert value["timezone"] == "UTC"
    assert value["iso"].endswith("+00:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "America", "../etc/passwd"])
def test_it_refuses_an_unknown_zone(zone):
    assert run("current_time", {"timezone": zone}).error == (
        f"ValueError: unknown time zone: {zone!r}"
    )


# http_get


def test_it_keeps_http_get_off_by_default(settings):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = []
    assert run("http_get", {"url": "https://example.com/"}).error == (
        "PermissionError: http_get is disabled: no allowed hosts are configured"
        " (TOOLS_HTTP_ALLOWED_HOSTS)"
    )


@pytest.mark.parametrize(
    "url",
    ["https://example.org/", "https://notexample.com/", "https://example.com@evil.test/"],
)
def test_it_refuses_a_host_not_in_the_allow_list(settings, url):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["*.example.com"]
    assert "is not in TOOLS_HTTP_ALLOWED_HOSTS" in run("http_get", {"url": url}).error


def test_it_refuses_other_schemes(settings):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["localhost"]
    assert run("http_get", {"url": "file://localhost/etc/passwd"}).error == (
        "ValueError: only http and https URLs are allowed"
    )


def test_it_refuses_a_host_that_resolves_to_loopback(settings, local_server):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["localhost"]
    settings.TOOLS_HTTP_ALLOW_PRIVATE = False
    result = run("http_get", {"url": f"{local_server}/"})
    assert result.output is None
    assert result.error.startswith("PermissionError: localhost resolves to ")
    assert result.error.endswith("which is not a public address")


def test_it_fetches_a_private_host_when_allowed(settings, local_server):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["localhost"]
    settings.TOOLS_HTTP_ALLOW_PRIVATE = True
    result = run("http_get", {"url": f"{local_server}/some/page?q=1"})
    assert result.error is None
    assert json.loads(result.output) == {
        "status": 200,
        "content_type": "text/plain; charset=utf-8",
        "body": f"hello from {local_server.removeprefix('http://')}/some/page?q=1",
    }


def test_it_does_not_follow_redirects(settings, local_server):
    settings.TOOLS_HTTP_ALLOWED_HOSTS = ["localhost"]
    settings.TOOLS_HTTP_ALLOW_PRIVATE = True
    value = json.loads(run("http_get", {"url": f"{local_server}/redirect"}).output)
    assert value["status"] == 302
    assert value["location"] == "/elsewhere"
    assert value["body"] == ""


def test_http_get_ends_at_its_deadline_against_a_server_that_drips_headers(
    drip_server, monkeypatch
):
    monkeypatch.setattr(builtin, "HTTP_DEADLINE", 1, raising=False)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="the server did not answer within 1 s"):
        builtin.http_get(drip_server.url)
    assert time.monotonic() - started < 1.5


def resolving_to(monkeypatch, address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    info = (family, socket.SOCK_STREAM, 6, "", (address, 443))
    monkeypatch.setattr(addresses.socket, "getaddrinfo", lambda *args, **kwargs: [info])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",  # site-local, deprecated but still routed by some networks
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::8.8.8.8",
        "::ffff:0:7f00:1",  # IPv4-translated
        "64:ff9b::7f00:1",  # NAT64 of loopback
        "64:ff9b::a01:203",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::7f00:1",  # local-use NAT64
        "64:ff9b:1::808:808",
        "2002:7f00:1::1",  # 6to4 of loopback
        "2002:a01:203::1",
        "2002:a9fe:a9fe::1",
        "2001:0:808:808:0:0:80ff:fffe",  # Teredo, client 127.0.0.1
        "2001:0:7f00:1:0:0:f7f7:f7f7",  # Teredo, server 127.0.0.1
        "2001:db8::1",
    ],
)
def test_it_refuses_an_address_that_is_not_public(monkeypatch, settings, address):
    settings.TOOLS_HTTP_ALLOW_PRIVATE = False
    resolving_to(monkeypatch, address)
    with pytest.raises(PermissionError) as refused:
        builtin._resolve("example.com", 443)
    assert str(refused.value) == f"example.com resolves to {address}, which is not a public address"


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_it_allows_a_public_address(monkeypatch, settings, address):
    settings.TOOLS_HTTP_ALLOW_PRIVATE = False
    resolving_to(monkeypatch, address)
    assert builtin._resolve("example.com", 443) == [address]
