"""The tools Relay ships with: calculator, current_time, http_get, and ask_user (which the agent
loop answers with a person's answer: agents/runner.py)."""

import ast
import http.client
import math
import operator
import threading
import time
from datetime import datetime
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from . import register
from .addresses import pinned_connection, resolve

# calculator

MAX_EXPRESSION = 500  # characters
MAX_EXPONENT = 1000
MAX_DIGITS = 1000  # of a result, so a few multiplications cannot fill the worker's memory

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # people write 2^8 for a power far more often than for xor
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


@register(
    "calculator",
    "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** (or ^) and parentheses.",
    {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. 2 * (3 + 4.5)"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    repeatable=True,
)
def calculator(expression):
    # Python's rules throughout: / always gives a float, the other operators keep ints as ints.
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression is too long (at most {MAX_EXPRESSION} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    try:
        return _evaluate(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large") from None
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None


def _evaluate(node):
    if isinstance(node, ast.Constant):
        # bool is an int to Python, but True + 1 is not arithmetic a user means.
        if type(node.value) not in (int, float):
            raise _refusal("only numbers are allowed", node)
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if _BINARY[type(node.op)] is operator.pow:
            _check_power(left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        raise _refusal("names are not allowed", node)
    if isinstance(node, ast.Call):
        raise _refusal("function calls are not allowed", node)
    if isinstance(node, ast.Attribute):
        raise _refusal("attribute access is not allowed", node)
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        raise _refusal("this operator is not allowed", node)
    raise _refusal("only numbers, arithmetic operators and parentheses are allowed", node)


def _check_power(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"the exponent is too large (at most {MAX_EXPONENT})")
    # Refuse before computing: a thousand-digit number to the thousandth power takes a while.
    if exponent > 0 and abs(base) > 1 and exponent * math.log10(abs(base)) >= MAX_DIGITS:
        raise ValueError(f"the result is too large (more than {MAX_DIGITS} digits)")


def _checked(value):
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is too large")
    if isinstance(value, int) and abs(value) >= 10**MAX_DIGITS:
        raise ValueError(f"the result is too large (more than {MAX_DIGITS} digits)")
    return value


def _refusal(reason, node):
    source = ast.unparse(node)
    if len(source) > 60:
        source = source[:57] + "..."
    return ValueError(f"{reason}: {source}")


# current_time


@register(
    "current_time",
    "The current date and time in a time zone.",
    {
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA time zone name such as Europe/Paris; UTC if not given",
            }
        },
        "additionalProperties": False,
    },
    repeatable=True,
)
def current_time(timezone="UTC"):
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "America"
        raise ValueError(f"unknown time zone: {timezone!r}") from None
    now = datetime.now(zone)
    return {
        "timezone": timezone,
        "iso": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
    }


# http_get

HTTP_TIMEOUT = 10  # seconds the call may take
HTTP_DEADLINE = 8  # seconds for the whole request, below HTTP_TIMEOUT so the tool reports it itself
HTTP_MAX_OUTPUT = 16000
_URL_SAFE = "/?:@!$&'()*+,;=~%"  # left as written when quoting a path or query


@register(
    "http_get",
    "Fetch a URL with an HTTP GET request. Only some hosts are allowed; redirects are reported,"
    " not followed.",
    {
        "type": "object",
        "properties": {"url": {"type": "string", "description": "an http:// or https:// URL"}},
        "required": ["url"],
        "additionalProperties": False,
    },
    timeout=HTTP_TIMEOUT,
    max_output=HTTP_MAX_OUTPUT,
    repeatable=True,  # a GET
)
def http_get(url):
    allowed_hosts = getattr(settings, "TOOLS_HTTP_ALLOWED_HOSTS", [])
    if not allowed_hosts:
        raise PermissionError(
            "http_get is disabled: no allowed hosts are configured (TOOLS_HTTP_ALLOWED_HOSTS)"
        )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http and https URLs are allowed")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    if not _host_allowed(host, allowed_hosts):
        raise PermissionError(f"host {host!r} is not in TOOLS_HTTP_ALLOWED_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)

    deadline = time.monotonic() + HTTP_DEADLINE
    connection = pinned_connection(parts.scheme, host, port, addresses, deadline=deadline)
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    # A socket timeout bounds each read, not their sum: a server sending a header byte every few
    # seconds would hold this thread for as long as it liked. At the deadline the socket is shut
    # down, which ends the read blocked on it, whichever part of the exchange it is in.
    watchdog = threading.Timer(HTTP_DEADLINE, connection.abort)
    watchdog.start()
    try:
        connection.request(
            "GET", target, headers={"User-Agent": "Relay http_get", "Accept-Encoding": "identity"}
        )
        response = connection.getresponse()
        body = _read(response, HTTP_MAX_OUTPUT + 1)  # one more, so truncation shows
    except (OSError, http.client.HTTPException):
        if not connection.aborted and time.monotonic() < deadline:
            raise
        connection.aborted = True  # the socket's timeout (the remaining time) may come first
    finally:
        watchdog.cancel()
        connection.close()
    if connection.aborted:  # a body cut off at the deadline is not the response
        raise TimeoutError(f"the server did not answer within {HTTP_DEADLINE:g} s")

    result = {
        "status": response.status,
        "content_type": response.getheader("Content-Type", ""),
        "body": _decode(body, response.headers.get_content_charset()),
    }
    if 300 <= response.status < 400 and response.getheader("Location"):
        result["location"] = response.getheader("Location")
    return result


def _host_allowed(host, allowed_hosts):
    # "*.example.com" allows the subdomains of example.com, not example.com itself.
    host = host.rstrip(".")
    for entry in allowed_hosts:
        entry = entry.strip().lower().rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry:
            return True
    return False


def _resolve(host, port):
    return resolve(host, port, allow_private=settings.TOOLS_HTTP_ALLOW_PRIVATE)


def _read(response, limit):
    body = bytearray()
    while len(body) < limit:
        chunk = response.read1(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _decode(body, charset):
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


# ask_user

ASK_USER = "ask_user"


@register(
    ASK_USER,
    "Ask the person you are working for a question, and wait for the answer: when you need"
    " something only they know or must decide.",
    {
        "type": "object",
        "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 4000}},
        "required": ["question"],
        "additionalProperties": False,
    },
)
def ask_user(question):
    raise RuntimeError("ask_user is answered by a person, through the agent loop")
