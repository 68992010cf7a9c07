"""A streaming client for OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, OpenRouter)."""

import contextlib
import errno
import http.client
import json
import logging
import os
import selectors
import socket
import ssl
from urllib.parse import urlsplit

from agents.llm.base import Model, ModelError, TextDelta, ToolCall, Usage

log = logging.getLogger(__name__)

EXCERPT_CHARS = 300  # of an error body, enough for the server's message without flooding the UI
ERROR_BODY_LIMIT = 64 * 1024


class OpenAIChatModel(Model):
    def __init__(self, *, base_url, api_key, model, timeout, connect_timeout=10):
        self.base_url = base_url.rstrip("/")
        self._url = urlsplit(self.base_url)
        if self._url.scheme not in ("http", "https") or not self._url.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    def stream(self, messages, tools, stop):
        if stop.is_set():
            return
        conn = self._connection()
        # A stop shuts the request's socket down in whatever phase it is: connecting, the TLS
        # handshake, waiting for the first byte, or reading the stream.
        handles = []
        conn._create_connection = lambda address, timeout, source_address=None: _connect(
            address, timeout, stop, handles
        )
        unregister = stop.on_stop(lambda: _abort_all(handles))
        try:
            try:
                conn.connect()
            except OSError as e:
                if stop.is_set():
                    return
                raise ModelError(f"cannot reach the model at {self.base_url}: {_reason(e)}") from e
            # The connect timeout was only for the handshake; a model may think for a long while.
            conn.sock.settimeout(self.timeout)
            try:
                yield from self._exchange(conn, messages, tools, stop)
            except (OSError, http.client.HTTPException) as e:
                if stop.is_set():
                    return  # our own shutdown broke the read: the run was stopped
                if isinstance(e, TimeoutError):
                    raise ModelError(f"the model sent nothing for {self.timeout:g} seconds") from e
                raise ModelError(f"the connection to the model broke: {_reason(e)}") from e
        finally:
            unregister()
            conn.close()
            for handle in handles:
                handle.close()

    def _connection(self):
        host, port = self._url.hostname, self._url.port
        if self._url.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self.connect_timeout)

    def _exchange(self, conn, messages, tools, stop):
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = tools
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        conn.request(
            "POST", self._url.path + "/chat/completions", json.dumps(body).encode(), headers
        )
        response = conn.getresponse()
        if response.status >= 400:
            raise _status_error(response)

        calls = {}  # index -> {"id", "name", "arguments"}, as the deltas build them up
        for chunk in _sse_chunks(response):
            if chunk.get("error"):
                raise ModelError(f"the model failed: {_error_message(chunk)}")
            if chunk.get("usage"):
                usage = chunk["usage"]
                yield Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            # We ask for one choice; only the first one counts.
            for choice in (chunk.get("choices") or [])[:1]:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield TextDelta(delta["content"])
                for part in delta.get("tool_calls") or ():
                    _add_tool_call_delta(calls, part)

        # A stop ends the stream early (our shutdown reads as end of file): any tool call
        # seen so far may be cut short, so none is worth running.
        if stop.is_set():
            return
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")


def _sse_chunks(response):
    """The JSON objects of an SSE stream's `data:` lines, until `data: [DONE]`."""
    while line := response.readline():
        line = line.decode("utf-8", "replace").rstrip("\r\n")
        if not line.startswith("data:"):
            continue  # blank lines, `:` keep-alive comments, event: and id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            # One garbled chunk should cost a few tokens of output, not the whole run.
            log.warning("skipping a malformed chunk from the model: %.200s", data)
            continue
        if isinstance(chunk, dict):
            yield chunk


def _add_tool_call_delta(calls, part):
    index = part.get("index")
    if index is None:
        # Some servers leave out `index`; a new id then starts a new call.
        known_ids = {call["id"] for call in calls.values()}
        if not calls or (part.get("id") and part["id"] not in known_ids):
            index = len(calls)
        else:
            index = max(calls)
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    function = part.get("function") or {}
    # id and name come whole (some servers repeat them); only arguments arrive in pieces.
    call["id"] = part.get("id") or call["id"]
    call["name"] = function.get("name") or call["name"]
    call["arguments"] += function.get("arguments") or ""


def _status_error(response):
    raw = response.read(ERROR_BODY_LIMIT).decode("utf-8", "replace")
    try:
        detail = _error_message(json.loads(raw)) or raw
    except ValueError:
        detail = raw
    detail = " ".join(detail.split())[:EXCERPT_CHARS] or response.reason
    return ModelError(f"model server answered {response.status}: {detail}")


def _error_message(payload):
    """The message of an `{"error": {"message": ...}}` body (or `{"error": "..."}`), or ""."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error))
    return str(error or "")


def _connect(address, timeout, stop, handles):
    """socket.create_connection, but one a stop can cut short: each socket gets a duplicate in
    `handles` before it connects (TLS later detaches the original object; the duplicate is the
    same socket), and the stop is looked at once the SYN is out, so a stop either lands before
    that look or shuts down a connecting socket, which wakes the wait."""
    error = OSError(f"no address for {address[0]}")
    for family, kind, proto, _, addr in socket.getaddrinfo(*address, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        handles.append(sock.dup())
        try:
            sock.setblocking(False)
            code = sock.connect_ex(addr)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            if stop.is_set():
                raise ConnectionAbortedError("stopped")
            with selectors.DefaultSelector() as selector:  # poll, not select: fds above 1024
                selector.register(sock, selectors.EVENT_WRITE)
                if not selector.select(timeout):
                    raise TimeoutError("timed out")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(timeout)
            return sock
        except OSError as e:
            sock.close()
            error = e
            if stop.is_set():
                break
    raise error


def _abort_all(handles):
    for handle in list(handles):
        _abort(handle)


def _abort(sock):
    # Shut the TCP socket itself down: a blocked read or connect returns at once.
    # SSLSocket.shutdown would also drop its TLS state from under the reading thread.
    with contextlib.suppress(OSError):  # already closed: nothing left to interrupt
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _reason(error):
    if isinstance(error, TimeoutError):
        return "timed out"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
