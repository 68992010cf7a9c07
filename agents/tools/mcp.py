"""The tools of MCP servers, over streamable HTTP or stdio, for the worker's threads.

The SDK is async: its coroutines run on one event loop per process, in a thread of its own, and
the calling thread waits for them. Each listing or call opens a session of its own (connect,
negotiate, one request, close), so that no connection outlives the call that needed it. That
costs about 7 ms a call over streamable HTTP on loopback (discover, the call, and the listing the
SDK fetches to check a result against the tool's output schema), and a process start per call
over stdio.
"""

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import ssl
import tempfile
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
from django.conf import settings
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from .addresses import first_private, resolve

logger = logging.getLogger(__name__)

MAX_TEXT = 1_000_000  # characters of a tool's result, before the registry's own cap
MAX_RESPONSE = 4 * 1024 * 1024  # bytes of one HTTP response
MAX_PAGES = 20  # of a tool listing
MAX_EXCERPT = 500  # characters of an error response or a stdio server's stderr, in a message
CLIENT = types.Implementation(name="relay", version="1")


@dataclass(frozen=True)
class Server:
    """An MCP server. `command` and `env` (stdio) only ever come from an administrator: the
    command runs on the worker. Headers and env hold secrets, so they stay out of the repr."""

    name: str
    transport: str  # "streamable-http" or "stdio"
    url: str = ""
    headers: dict = field(default_factory=dict, repr=False)
    command: tuple = ()
    env: dict = field(default_factory=dict, repr=False)
    allow_private: bool = field(default_factory=lambda: settings.MCP_ALLOW_PRIVATE)


class McpError(Exception):
    """What went wrong, in words the user who configured the server can act on."""


class McpToolError(McpError):
    """The tool ran and reported an error (a result with isError): its text."""


class McpTimeoutError(McpError, TimeoutError):
    """The server did not answer in time; the call was cancelled."""


class McpStopped(McpError):
    """The run was stopped; the call was cancelled."""


def list_tools(server, *, timeout=None, stop=None) -> list[dict]:
    """The server's tools: {"tool": its own name, "description", "parameters": its input schema}.
    A stop cancels the listing as it does a call."""
    timeout = settings.MCP_LIST_TIMEOUT if timeout is None else timeout
    return _run(
        _list_tools(server),
        timeout=timeout,
        stop=stop,
        timed_out=f"{_where(server)} did not answer within {timeout:g} s",
    )


def call_tool(server, tool, arguments, *, timeout=None, stop=None) -> str:
    """Call the server's tool `tool` and return its result as text.

    When `stop` (a StopSignal) is set, the call is cancelled where it is (the HTTP request is
    closed, the stdio server stopped) and McpStopped is raised at once, the teardown left to the
    event loop. A result marked as an error raises McpToolError with its text."""
    timeout = settings.MCP_TIMEOUT if timeout is None else timeout
    return _run(
        _call_tool(server, tool, arguments),
        timeout=timeout,
        stop=stop,
        timed_out=f"timed out after {timeout:g} s",
    )


_MODEL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # what OpenAI and Anthropic accept


def model_names(server_name, tool_names) -> dict[str, str]:
    """The name the model sees for each of the server's tools -> the tool's own name.

    A name is `<server>__<tool>`. One the providers would refuse has its other characters
    replaced by `_`, is cut to fit, and ends in a hash of the name it stands for, so that two
    tools never share one; the result depends on the names alone, not their order or process."""
    names = {}
    changed = []
    for tool in sorted(set(tool_names)):
        name = f"{server_name}__{tool}"
        if _MODEL_NAME.fullmatch(name):
            names[name] = tool
        else:
            changed.append((name, tool))
    for name, tool in changed:
        clean = re.sub(r"[^a-zA-Z0-9_-]", "_", name)
        digest = hashlib.sha256(name.encode()).hexdigest()
        for length in (8, 16, 32):  # longer only if a shorter one is taken
            suffix = "_" + digest[:length]
            candidate = clean[: 64 - len(suffix)] + suffix
            if candidate not in names:
                names[candidate] = tool
                break
        else:  # 128 bits of SHA-256 alike: not in this universe
            raise ValueError(f"no unique model name for {name!r}")
    return names


# The event loop


class _Loop:
    """One event loop per process, in a daemon thread, started on first use (and again in a
    forked child, which has the loop object but not its thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop = None
        self._pid = None

    def get(self):
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                threading.Thread(target=self._loop.run_forever, name="mcp", daemon=True).start()
            return self._loop


_loop = _Loop()


class _Cancel:
    """Cancels a coroutine running on the loop, from any thread, whether it has begun or not."""

    def __init__(self, loop):
        self._loop = loop
        self._scope = None
        self._requested = False

    def __call__(self):
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self):  # on the loop, as is `run`: no lock needed
        self._requested = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, coroutine):
        # An anyio scope rather than Task.cancel(): the SDK's shielded teardown (a stdio server
        # stopped, then killed) then still runs to its end.
        with anyio.CancelScope() as self._scope:
            if self._requested:
                self._scope.cancel()
            return await coroutine
        raise McpStopped("cancelled")  # nobody waits for this any more


def _run(coroutine, *, timeout, stop, timed_out):
    loop = _loop.get()
    cancel = _Cancel(loop)
    future = asyncio.run_coroutine_threadsafe(cancel.run(coroutine), loop)
    woken = threading.Event()
    future.add_done_callback(lambda _: woken.set())
    forget = stop.on_stop(woken.set) if stop is not None else lambda: None
    try:
        woken.wait(timeout)
    finally:
        forget()
    if not future.done():
        cancel()  # the teardown goes on in the loop, bounded by the SDK's own limits
        if stop is not None and stop.is_set():
            raise McpStopped("the run was stopped")
        raise McpTimeoutError(timed_out)
    return future.result()


# Sessions


async def _list_tools(server):
    tools = []
    async with _Session(server) as client:
        cursor = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools += page.tools
            cursor = page.next_cursor
            if cursor is None:
                break
    return [
        {"tool": t.name, "description": t.description or "", "parameters": t.input_schema}
        for t in tools
    ]


async def _call_tool(server, tool, arguments):
    async with _Session(server) as client:
        result = await client.call_tool(tool, arguments)
    text = _text(result)
    if result.is_error:
        raise McpToolError(text or "the tool failed")
    return text


class _Session:
    """A connected Client; every failure on the way comes out as an McpError."""

    def __init__(self, server):
        self.server = server
        self.stack = AsyncExitStack()
        self.answer = None  # the last POST's answer, if an error: (status, reason, body excerpt)
        self.errors = ""  # the end of a stdio server's standard error

    async def __aenter__(self):
        try:
            if self.server.transport == "streamable-http":
                transport = await self._http()
            elif self.server.transport == "stdio":
                transport = self._stdio()
            else:
                raise McpError(f"unknown MCP transport {self.server.transport!r}")
            client = Client(transport, cache=None, client_info=CLIENT)
            return await self.stack.enter_async_context(client)
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise self._error(exc) from None

    async def __aexit__(self, *exc_info):
        await self._close(*exc_info)
        if exc_info[1] is not None:
            raise self._error(exc_info[1]) from None

    async def _close(self, *exc_info):
        try:
            await self.stack.__aexit__(*exc_info)
        except BaseException as exc:  # the SDK's teardown may raise what the session met
            if exc is exc_info[1]:
                raise
            raise self._error(exc) from None

    async def _http(self):
        server = self.server
        parts = urlsplit(server.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise McpError(
                f"the MCP server's URL must begin with http:// or https://: {_url(server)}"
            )
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await anyio.to_thread.run_sync(
            lambda: resolve(host, port, allow_private=True), abandon_on_cancel=True
        )
        refused = None if server.allow_private else first_private(addresses)
        if refused is not None:
            raise McpError(
                f"the URL {_url(server)} resolves to {refused}, which is not a public address"
                " (set MCP_ALLOW_PRIVATE=1 to allow it)"
            )
        http = httpx2.AsyncClient(
            headers=server.headers,
            transport=_PinnedTransport(host, addresses),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would be dialled instead
            timeout=None,  # the caller's deadline bounds the whole call
            event_hooks={"response": [self._note]},
        )
        await self.stack.enter_async_context(http)
        return streamable_http_client(server.url, http_client=http, max_sse_event_size=MAX_RESPONSE)

    async def _note(self, response):
        # The SDK turns a refusal into "Server returned an error response": the status is what
        # tells a user what to fix. Only POSTs: those carry the requests, and a GET stream that
        # the server does not offer (405) is no failure.
        if response.request.method != "POST":
            return
        self.answer = None
        if response.status_code >= 400:
            body = ""
            if int(response.headers.get("content-length") or MAX_EXCERPT + 1) <= MAX_EXCERPT:
                body = (await response.aread()).decode("utf-8", "replace").strip()
            self.answer = (response.status_code, response.reason_phrase, body)

    def _stdio(self):
        server = self.server
        if not server.command:
            raise McpError("the MCP server has no command to run")
        stderr = self.stack.enter_context(
            tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        )
        self.stack.callback(self._keep_errors, stderr)  # once the server has exited
        # The SDK adds HOME, LOGNAME, PATH, SHELL, TERM and USER to `env`, none of the
        # worker's own settings (its database URL, its keys).
        parameters = StdioServerParameters(
            command=server.command[0], args=list(server.command[1:]), env=dict(server.env)
        )
        return stdio_client(parameters, errlog=stderr)

    def _keep_errors(self, stderr):
        stderr.seek(0, os.SEEK_END)
        stderr.seek(max(0, stderr.tell() - MAX_EXCERPT * 4))
        self.errors = stderr.read().strip()[-MAX_EXCERPT:] or "(nothing on its standard error)"

    def _error(self, exc):
        """The McpError that says what `exc`, from anywhere in the SDK, means to a user."""
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc  # the caller's own cancellation, to reach its scope
        found = _find(exc, McpError)
        if found is not None:
            return found
        where = _where(self.server)
        if self.answer is not None:
            status, reason, body = self.answer
            return McpError(f"{where} answered {status} {reason}" + (f": {body}" if body else ""))
        mcp_error = _find(exc, MCPError)
        if self.server.transport == "stdio":
            program = self.server.command[0]
            if mcp_error is None and isinstance(exc, OSError):
                return McpError(f"cannot start the command {program}: {exc}")
            if mcp_error is None or mcp_error.error.code == types.CONNECTION_CLOSED:
                return McpError(f"the command {program} exited: {self.errors}")
        else:
            unreachable = _unreachable(exc)
            if unreachable is not None:
                return McpError(f"cannot reach {where}: {unreachable}")
            broken = _find(exc, httpx2.TransportError)
            if broken is not None:  # it answered, but not in HTTP: not an MCP server there?
                return McpError(f"the connection to {where} broke: {broken}")
        if mcp_error is not None:
            return McpError(f"{where} answered with an error: {mcp_error.error.message}")
        logger.warning("MCP session failed", exc_info=exc)
        detail = str(exc)  # e.g. the SDK's "Invalid structured content returned by tool ..."
        if len(detail) > MAX_EXCERPT:
            detail = detail[: MAX_EXCERPT - 3] + "..."
        return McpError(f"{where} failed: {type(exc).__name__}" + (f": {detail}" if detail else ""))


class _PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends each request to the addresses checked for its host, never to what a second DNS
    lookup would answer (DNS rebinding). TLS still checks the certificate against the host."""

    def __init__(self, host, addresses):
        self._host, self._addresses = host, addresses
        self._inner = httpx2.AsyncHTTPTransport(verify=_tls())

    async def handle_async_request(self, request):
        if request.url.host != self._host:  # the SDK follows redirects within the origin only
            raise McpError(f"refusing to connect to {request.url.host}: not the server's host")
        error = None
        for address in self._addresses:
            pinned = httpx2.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # its Host header names the host, not the address
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": self._host},
            )
            try:
                response = await self._inner.handle_async_request(pinned)
            except httpx2.ConnectError as exc:
                error = exc
                continue
            response.stream = _Limited(response.stream, MAX_RESPONSE)
            return response
        raise error

    async def aclose(self):
        await self._inner.aclose()


@functools.cache
def _tls():
    # Shared: loading the system's certificates takes 17 ms, more than the rest of a call.
    return httpx2.create_ssl_context()


class _Limited(httpx2.AsyncByteStream):
    def __init__(self, stream, limit):
        self._stream, self._limit = stream, limit

    async def __aiter__(self):
        read = 0
        async for chunk in self._stream:
            read += len(chunk)
            if read > self._limit:
                raise McpError(f"the MCP server sent more than {self._limit} bytes in one response")
            yield chunk

    async def aclose(self):
        await self._stream.aclose()


def _text(result):
    parts = [_describe(block) for block in result.content]
    if result.structured_content is not None and not any(
        isinstance(block, types.TextContent) for block in result.content
    ):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"\n[output truncated: {len(text)} characters]"
    return text


def _describe(block):
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri}]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return resource.text
        return f"[resource: {resource.uri} ({resource.mime_type or 'binary'})]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"


def _url(server):
    # Neither the user and password nor the query of the URL: they may hold a key.
    parts = urlsplit(server.url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "(no URL)"


def _where(server):
    if server.transport == "stdio":
        return f"the MCP server {server.command[0] if server.command else server.name}"
    return f"the MCP server at {_url(server)}"


def _find(exc, kind):
    """The first exception of `kind` in `exc`, its exception groups and their causes, breadth
    first (so an exception comes before the one it was raised from)."""
    seen = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
        pending += [current.__cause__, current.__context__]
    return None


def _unreachable(exc):
    """Why the server could not be reached, if that is what `exc` says."""
    error = _find(exc, OSError)
    if error is None:
        return None
    if error.errno is None and isinstance(error.__cause__, OSError):
        error = error.__cause__  # anyio's "All connection attempts failed" has the reason there
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its certificate is refused: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__
