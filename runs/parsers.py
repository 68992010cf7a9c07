"""The JSON Relay accepts: only what UTF-8 and PostgreSQL's jsonb can hold (no NUL, no lone
surrogate, finite numbers), nested within settings.JSON_MAX_DEPTH. The API's parser, and the
same check for JSON that arrives another way (the workflow run form)."""

import json
import math
import re

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# a string token or a bracket, to find where text too deep to decode goes too deep
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints (DEFAULT_AUTO_FIELD is BigAutoField)


def integer(value):
    """`value` as an int if it is one, or ASCII digits as a form sends them; else None (1.5,
    which the ORM would take as 1, 1e999, true, "²")."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) if len(value) < 20 else MAX_ID + 1  # no int() of a million digits
    return value if type(value) is int else None


def object_id(value):
    """`value` as an id that can exist, else None."""
    number = integer(value)
    return number if number is not None and 0 < number <= MAX_ID else None


class UnstorableJSON(ValueError):
    """`reason` for the part of the JSON at `path`, under the top-level key `field` (if any)."""

    def __init__(self, path, reason, field=""):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path, self.reason, self.field = path, reason, field


def check_storable(value, path=""):
    """Raise UnstorableJSON for the first part of `value` that could not be stored or sent.

    Iterative, so that no nesting can exhaust the stack; `path` names the part as the
    workflow definition's errors do (`steps[0].prompt`)."""
    limit = settings.JSON_MAX_DEPTH
    stack = [(value, path, "", 1)]
    while stack:
        item, where, field, depth = stack.pop()
        if isinstance(item, dict | list) and depth > limit:
            raise UnstorableJSON(where, f"Nested deeper than {limit} levels.", field)
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, where, field)
                shown = _shown(key)
                child_path = f"{where}.{shown}" if where else shown
                stack.append((child, child_path, field or shown, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]", field, depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where, field)
        elif isinstance(item, float) and not math.isfinite(item):
            raise UnstorableJSON(where, "Numbers must be finite (not NaN or Infinity).", field)


def _check_text(text, where, field):
    if "\x00" in text:  # DRF's own wording for its text fields
        raise UnstorableJSON(where, "Null characters are not allowed.", field)
    if _SURROGATE.search(text):
        # half of a UTF-16 pair: no character, and UTF-8 cannot encode it (nor echo it back)
        raise UnstorableJSON(where, "Lone surrogates (\\ud800-\\udfff) are not text.", field)


def _shown(key):
    """A key as a path may show it, whatever it holds (the path goes into error messages)."""
    return key.encode("utf-8", "backslashreplace").decode()


def loads(text, path=""):
    """JSON text as a value check_storable accepts, else a ValueError saying why: UnstorableJSON,
    or json.JSONDecodeError for text that is not JSON."""
    try:
        value = json.loads(text)  # NaN and Infinity decode, so that the check names them
    except RecursionError:
        field = _too_deep_under(text)
        where = ".".join(part for part in (path, field) if part)
        limit = settings.JSON_MAX_DEPTH
        raise UnstorableJSON(where, f"Nested deeper than {limit} levels.", field) from None
    check_storable(value, path)
    return value


def _too_deep_under(text):
    """The top-level key under which text too deep to decode goes beyond JSON_MAX_DEPTH ("" when
    it is not in an object)."""
    limit, depth, key, last = settings.JSON_MAX_DEPTH, 0, "", ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                break
        elif token in "]}":
            depth -= 1
        elif token == ":":
            if depth == 1:
                key = last
        else:
            last = token
    try:
        return _shown(json.loads(key)) if key else ""
    except ValueError:
        return ""


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing what check_storable refuses with a 400 under the top-level
    field it is in: `{"inputs": ["inputs.a: Numbers must be finite (not NaN or Infinity)."]}`."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return loads(stream.read().decode(encoding))
        except UnstorableJSON as exc:
            if exc.field:
                message = exc.reason if exc.path == exc.field else str(exc)
                raise ParseError({exc.field: [message]}) from None
            raise ParseError(f"JSON parse error - {exc}") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
