"""MCP servers for the tests, built on the SDK's own server side: over streamable HTTP on
127.0.0.1 in a thread of the test process, or over stdio when this file is run as a script."""

import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import mcp_types as types
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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

    @server.tool(description="Text, an image, a link and a resource.")
    def mixed() -> types.CallToolResult:
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="some text"),
                types.ImageContent(type="image", data="aGVsbG8h", mime_type="image/png"),
                types.ResourceLink(type="resource_link", name="doc", uri="https://example.com/a"),
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(uri="file:///notes", text="the notes"),
                ),
            ]
        )

    @server.tool(description="Structured content and no text.")
    def structured() -> types.CallToolResult:
        return types.CallToolResult(content=[], structured_content={"temperature": 21.5})

    @server.tool(description="A large text.")
    def big(size: int) -> str:
        return "x" * size

    return server


class _Redirect:
    """Answers every request with a redirect to `location`."""

    def __init__(self, location):
        self.location = location

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"location", self.location.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


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


def self_signed(directory, host):
    """A certificate for `host` and its key, as files in `directory`: (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certificate_file), str(key_file)


class HttpServer:
    """The test server over streamable HTTP on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, require_token=False, tls=None, redirect_to=None):
        """`tls`: (certificate file, key file) to serve https; `redirect_to`: a URL that every
        request is redirected to, instead of an MCP server."""
        self.events = {"hang_started": threading.Event(), "hang_cancelled": threading.Event()}
        self.port = self.url = None  # known once it listens
        self.scheme = "https" if tls else "http"
        app = build(self.events).streamable_http_app()
        if require_token:
            app = _RequireToken(app)
        if redirect_to:
            app = _Redirect(redirect_to)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,  # the system's choice: no race with another process for a free one
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
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
        self.url = f"{self.scheme}://127.0.0.1:{self.port}/mcp"
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
