"""What the models behind an HTTP endpoint share: their constructor and retries (RemoteModel),
an httpx2 client for their SDK whose sockets a stop shuts down in any phase and that skips
malformed stream events, and the ModelError each kind of failure becomes."""

import contextlib
import dataclasses
import errno
import json
import logging
import os
import selectors
import socket
import ssl
import threading

import httpcore2
import httpx2

from ..tools.addresses import first_private
from .base import Model, ModelError, Retrying
from .retry import Unavailable, retry_after, with_retries

log = logging.getLogger(__name__)

EXCERPT_CHARS = 300  # of an error body, enough for the server's message without flooding the UI
RETRIED_STATUSES = {408, 409, 429}  # and every 5xx, Anthropic's 529 "overloaded" among them


class RemoteModel(Model):
    """A model behind an HTTP endpoint, called through its provider's SDK: `_call()` streams one
    call, retried as agents.llm.retry says."""

    def __init__(
        self,
        *,
        base_url,
        api_key,
        model,
        timeout,
        headers=None,
        temperature=None,
        max_tokens=None,
        connect_timeout=10,
        allow_private=True,
    ):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.connect_timeout = connect_timeout
        self.allow_private = allow_private  # a user's provider: only public addresses

    def stream(self, messages, tools, stop, deadline=None):
        items = with_retries(
            lambda: self._call(messages, tools, stop), stop=stop, deadline=deadline
        )
        try:
            for item in items:
                if isinstance(item, Retrying):
                    item = dataclasses.replace(item, reason=self._redacted(item.reason))
                yield item
        except ModelError as e:
            e.args = (self._redacted(str(e)),)  # a server may quote the key it refused
            raise

    def _redacted(self, text):
        return text.replace(self.api_key, "[the API key]") if self.api_key else text

    def _call(self, messages, tools, stop):
        raise NotImplementedError

    def http_client(self, stop):
        """The HTTP client of one call (close it after): a stop shuts its sockets down."""
        return http_client(
            stop,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            allow_private=self.allow_private,
        )


def http_client(stop, *, timeout, connect_timeout, allow_private=True):
    """A client for one model call; close it after the call. A stop shuts its sockets down.
    `timeout` is also the longest silence while the model streams. Unless `allow_private`, it
    connects only to public addresses, checked on the very addresses it dials."""
    timeout = httpx2.Timeout(timeout, connect=connect_timeout)
    backend = StoppableBackend(stop, allow_private=allow_private)
    return httpx2.Client(transport=_Transport(backend), timeout=timeout)


class RefusedAddress(OSError):
    """The provider's host is not at a public address, and private ones are not allowed."""


class StoppableBackend(httpcore2.NetworkBackend):
    """Opens TCP connections a stop cuts short: connecting, during the TLS handshake, waiting for
    the first byte or reading the stream. A plain close from the stopping thread would not wake
    a blocked recv(); shutdown() does."""

    def __init__(self, stop, *, allow_private=True):
        self.stop = stop
        self.allow_private = allow_private
        self._lock = threading.Lock()
        self._handles = []  # duplicates of the sockets: TLS detaches the originals
        self._unregister = stop.on_stop(self._abort)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            sock = self._connect((host, port), timeout)
        except TimeoutError as e:
            raise httpcore2.ConnectTimeout("timed out") from e
        except OSError as e:
            raise httpcore2.ConnectError(reason(e)) from e
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Stream(sock)

    def _connect(self, address, timeout):
        # The stop is looked at once the SYN is out: a stop either lands before that look or
        # shuts down a connecting socket, which wakes the wait. Before connect_ex a shutdown
        # would do nothing.
        error = OSError(f"no address for {address[0]}")
        infos = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)
        refused = None if self.allow_private else first_private([i[4][0] for i in infos])
        if refused is not None:
            raise RefusedAddress(
                f"{address[0]} resolves to {refused}, which is not a public address (an"
                " administrator can allow private ones: PROVIDERS_ALLOW_PRIVATE=1)"
            )
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            with self._lock:
                self._handles.append(sock.dup())
            try:
                sock.setblocking(False)
                code = sock.connect_ex(addr)
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
                if self.stop.is_set():
                    raise ConnectionAbortedError(errno.ECONNABORTED, "stopped")
                with selectors.DefaultSelector() as selector:  # poll, not select: fds over 1024
                    selector.register(sock, selectors.EVENT_WRITE)
                    if not selector.select(timeout):
                        raise TimeoutError("timed out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                sock.setblocking(True)
                return sock
            except OSError as e:
                sock.close()
                error = e
                if self.stop.is_set():
                    break
        raise error

    def _abort(self):
        with self._lock:
            handles = list(self._handles)
        for handle in handles:
            with contextlib.suppress(OSError):  # already closed: nothing left to interrupt
                handle.shutdown(socket.SHUT_RDWR)

    def close(self):
        self._unregister()
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()

    def sleep(self, seconds):
        self.stop.wait(seconds)


class _Stream(httpcore2.NetworkStream):
    def __init__(self, sock):
        self._sock = sock

    def read(self, max_bytes, timeout=None):
        with _mapped(httpcore2.ReadTimeout, httpcore2.ReadError):
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)

    def write(self, buffer, timeout=None):
        with _mapped(httpcore2.WriteTimeout, httpcore2.WriteError):
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)

    def close(self):
        self._sock.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        with _mapped(httpcore2.ConnectTimeout, httpcore2.ConnectError):
            self._sock.settimeout(timeout)
            return _Stream(ssl_context.wrap_socket(self._sock, server_hostname=server_hostname))

    def get_extra_info(self, info):
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock  # what httpcore2 asks it for: selected_alpn_protocol()
        if info == "socket":
            return self._sock
        return None


@contextlib.contextmanager
def _mapped(on_timeout, on_error):
    try:
        yield
    except TimeoutError as e:
        raise on_timeout("timed out") from e
    except OSError as e:
        raise on_error(reason(e)) from e


class _Transport(httpx2.HTTPTransport):
    def __init__(self, backend):
        super().__init__()
        # HTTPTransport takes no network backend: its pool gives way to one with ours. No
        # keep-alive: a client serves one call, so no connection is used twice.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_keepalive_connections=0,
            network_backend=backend,
        )
        self._backend = backend

    def handle_request(self, request):
        response = super().handle_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = WellFormedEvents(response.stream)
        return response

    def close(self):
        super().close()
        self._backend.close()


class WellFormedEvents(httpx2.SyncByteStream):
    """An SSE body without the events whose data is not JSON (but `[DONE]`): the SDKs would
    raise on them, and one garbled chunk should cost a few tokens of output, not the run."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        event, rest = [], b""
        for chunk in self._stream:
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                event.append(line)
                if not line.rstrip(b"\r"):  # a blank line ends the event
                    if _well_formed(event):
                        yield b"\n".join(event) + b"\n"
                    event = []
        if event or rest:
            yield b"\n".join([*event, rest])

    def close(self):
        self._stream.close()


def _well_formed(lines):
    data = [line[5:].rstrip(b"\r") for line in lines if line.startswith(b"data:")]
    if not data:
        return True  # keep-alive comments, a bare event: field
    text = b"\n".join(part[1:] if part.startswith(b" ") else part for part in data)
    if text.strip() == b"[DONE]":
        return True
    try:
        json.loads(text)
    except ValueError:
        log.warning(
            "skipping a malformed chunk from the model: %.200s", text.decode(errors="replace")
        )
        return False
    return True


def status_failure(response):
    """The ModelError for an HTTP error answer."""
    status = response.status_code
    try:
        raw = response.text
    except httpx2.HTTPError:  # the body never came whole
        raw = ""
    try:
        detail = error_message(json.loads(raw)) or raw
    except ValueError:
        detail = raw
    detail = " ".join(detail.split())[:EXCERPT_CHARS] or response.reason_phrase
    message = f"the model server answered {status}: {detail}"
    if status in RETRIED_STATUSES or status >= 500:
        return Unavailable(message, retry_after(response.headers))
    return ModelError(message)


def connection_failure(error, *, base_url, timeout):
    """The ModelError for a failure of the connection: all of them are worth another try, but
    a refused address, which will not change."""
    cause = error
    while cause is not None:
        if isinstance(cause, RefusedAddress):
            return ModelError(f"cannot call the model at {base_url}: {cause}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpx2.ConnectError | httpx2.ConnectTimeout):
        return Unavailable(f"cannot reach the model at {base_url}: {error or 'failed'}")
    if isinstance(error, httpx2.TimeoutException):
        return Unavailable(f"the model sent nothing for {timeout:g} seconds")
    return Unavailable(f"the connection to the model broke: {error or type(error).__name__}")


def error_message(payload):
    """The message of an `{"error": {"message": ...}}` body (or `{"error": "..."}`), or ""."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error))
    return str(error or "")


def reason(error):
    if isinstance(error, TimeoutError):
        return "timed out"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]
