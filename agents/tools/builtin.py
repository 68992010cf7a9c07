"""The tools Relay ships with: calculator, current_time and http_get."""

import ast
import http.client
import ipaddress
import math
import operator
import socket
import ssl
import time
from datetime import datetime
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from . import register

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
HTTP_SOCKET_TIMEOUT = 8  # per connect or read, below HTTP_TIMEOUT so the tool reports it itself
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

    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(host, port, addresses, timeout=HTTP_SOCKET_TIMEOUT)
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    try:
        connection.request(
            "GET", target, headers={"User-Agent": "Relay http_get", "Accept-Encoding": "identity"}
        )
        response = connection.getresponse()
        body = _read(response, HTTP_MAX_OUTPUT + 1)  # one more, so truncation shows
    finally:
        connection.close()

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
    """The host's addresses; all of them must be public unless private ones are allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not getattr(settings, "TOOLS_HTTP_ALLOW_PRIVATE", False):
        for address in addresses:
            ip = ipaddress.ip_address(address)
            # is_global is false for private, loopback, link-local, reserved and unspecified
            # addresses, but true for multicast ones.
            if not ip.is_global or ip.is_multicast:
                raise PermissionError(
                    f"{host} resolves to {address}, which is not a public address"
                )
    return addresses


def _connect(addresses, port, timeout):
    # Only ever the addresses checked in _resolve: a second DNS lookup here could answer
    # differently (DNS rebinding) and reach an internal service.
    error = OSError("no addresses to connect to")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, addresses, *, timeout):
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self):
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, addresses, *, timeout):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.addresses = addresses

    def connect(self):
        sock = _connect(self.addresses, self.port, self.timeout)
        try:
            # The certificate must match the host name in the URL, not the address dialled.
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _read(response, limit):
    # The socket timeout bounds each read, not their sum: a server sending a byte at a time would
    # otherwise hold the tool's thread long after the call has timed out.
    deadline = time.monotonic() + HTTP_SOCKET_TIMEOUT
    body = bytearray()
    while len(body) < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("the server was too slow sending the response")
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
