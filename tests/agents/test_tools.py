"""Tests for the agent tool registry and the built-in tools."""

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents import tools

ALL = tools.names()


def run(name, arguments, allowed=None):
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return tools.call(name, arguments, allowed=ALL if allowed is None else allowed)


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
