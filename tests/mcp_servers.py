"""MCP servers for the tests, built on the SDK's own server side: over streamable HTTP on
127.0.0.1 in a thread of the test process, or over stdio when this file is run as a script."""

import os
import sys
import threading
import time
from pathlib import Path

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

TOKEN = "Bearer test-secret-token"
LONG_NAME = "look_up_the_weather_forecast_for_a_city_over_the_next_several_days_in_detail"


def build(events=None, marks=None):
    """The test server. What hang() does is told to `events` (threading.Events, in the test
    process), or as files in the directory `marks` (from a stdio server)."""
    server = MCPServer("relay-test", log_level="CRITICAL")

    @server.tool(description="Repeat the text.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

    @server.tool(description="Always fails.")
    def fail() -> str:
        raise ToolError("the tool failed on purpose")

    @server.tool(description="Sleeps for a minute.")
    async def hang() -> str:
        if events is not None:
            events["hang_started"].set()
        if marks is not None:
            (marks / "hang").touch()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            if events is not None:
                events["hang_cancelled"].set()
            raise
        return "woke up"

    @server.tool(name="get.weather", description="The weather in a city.")
    def get_weather(city: str) -> str:
        return f"sunny in {city}"

    @server.tool(name=LONG_NAME, description="A tool whose name is too long for the models.")
    def long_named() -> str:
        return "long"

    @server.tool(description="A large text.")
    def big(size: int) -> str:
        return "x" * size

    return server


class _RequireToken:
    """Answers 401 to a request without the test token, as a server behind auth does."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != (
            TOKEN.encode()
        ):
            body = b'{"error": "invalid_token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class HttpServer:
    """The test server over streamable HTTP on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, require_token=False):
        self.events = {"hang_started": threading.Event(), "hang_cancelled": threading.Event()}
        self.port = self.url = None  # known once it listens
        app = build(self.events).streamable_http_app()
        if require_token:
            app = _RequireToken(app)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,  # the system's choice: no race with another process for a free one
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="mcp-test-server", daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(5)


if __name__ == "__main__":
    # stdio: `python tests/mcp_servers.py`, or `... exit` to fail at start as a broken server does
    if sys.argv[1:] == ["exit"]:
        print("cannot start: the configuration is missing", file=sys.stderr)
        sys.exit(3)
    marks = os.environ.get("MCP_TEST_MARKS")  # a directory: the pid, and whether hang() began
    if marks:
        (Path(marks) / "pid").write_text(str(os.getpid()))
    build(marks=Path(marks) if marks else None).run("stdio")
