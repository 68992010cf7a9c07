"""One signed POST to a receiver: to the addresses checked (the address rules of http_get and
MCP, agents/tools/addresses.py), within one deadline for the connection and the whole answer,
no redirect followed, at most a few KB of the answer read."""

import dataclasses
import http.client
import threading
import time
from urllib.parse import urlsplit

from agents.tools.addresses import pinned_connection, resolve

from .models import Attempt

Outcome = Attempt.Outcome


@dataclasses.dataclass
class Result:
    outcome: str
    status_code: int | None = None
    error: str = ""
    response: str = ""


def post(url, body, headers, *, timeout, allow_private, max_bytes):
    """POST `body` (bytes) to `url`; the Result says what became of it. Never raises for what a
    receiver does."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return Result(Outcome.REFUSED, error=f"not a valid URL: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Result(Outcome.REFUSED, error="not an http:// or https:// URL")
    try:
        addresses = resolve(parts.hostname, port, allow_private=allow_private)
    except PermissionError as exc:
        return Result(Outcome.REFUSED, error=f"{exc} (WEBHOOKS_ALLOW_PRIVATE is off)")
    except OSError as exc:
        return Result(Outcome.CONNECTION_ERROR, error=str(exc))
    deadline = time.monotonic() + timeout
    connection = pinned_connection(parts.scheme, parts.hostname, port, addresses, deadline=deadline)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # A socket timeout bounds each read, not their sum: the watchdog shuts the socket down at
    # the deadline, whatever the exchange is blocked on (as http_get does).
    watchdog = threading.Timer(timeout, connection.abort)
    watchdog.start()
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        excerpt = response.read(max_bytes)
    except (OSError, http.client.HTTPException) as exc:
        if connection.aborted or time.monotonic() >= deadline:
            return Result(Outcome.TIMEOUT, error=f"no whole answer within {timeout:g} s")
        return Result(Outcome.CONNECTION_ERROR, error=_reason(exc))
    finally:
        watchdog.cancel()
        connection.close()
    text = excerpt.decode("utf-8", errors="replace")
    if 200 <= response.status < 300:
        return Result(Outcome.DELIVERED, response.status, response=text)
    error = f"the receiver answered {response.status}"
    if 300 <= response.status < 400:
        error += f" (a redirect, not followed: {response.getheader('Location', '')[:200]})"
    return Result(Outcome.HTTP_ERROR, response.status, error=error, response=text)


def _reason(exc):
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:500]
