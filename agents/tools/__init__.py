"""Tools an agent may call: named functions with JSON-schema parameters, run with a time limit."""

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import jsonschema
from django.conf import settings

from runs import metrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT = 16000  # characters
SchemaError = jsonschema.exceptions.SchemaError


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    func: Callable[..., Any]
    timeout: float = 10  # seconds
    max_output: int = DEFAULT_MAX_OUTPUT
    server: str = ""  # the MCP server it comes from; "" for a built-in
    stoppable: bool = False  # func(arguments, stop): it ends its work when the run stops
    # it only reads: a call a lost worker left without a result may be made again on resume
    repeatable: bool = False


@dataclass(frozen=True)
class ToolResult:
    output: str | None
    error: str | None


_registry: dict[str, Tool] = {}

# A tool's name is the model's to choose among the agent's, and MCP servers bring their own:
# capped (runs/metrics.py), and a name the agent does not have is counted as "unknown".
CALLS = metrics.counter(
    "relay_tool_calls_total",
    "Tool calls, by tool and outcome: ok, error (the tool raised or returned no JSON), timeout,"
    " stopped (the run was), invalid (unknown tool, not allowed, bad arguments), busy (too many"
    " calls in progress)",
    labels=("tool", "outcome"),
    capped=("tool",),
)
DURATION = metrics.histogram(
    "relay_tool_call_duration_seconds",
    "How long tool calls took, from the call to its result (or its time limit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    labels=("tool",),
    capped=("tool",),
)


class _Slots:
    """The tool calls in progress in this process, counted per user and per run.

    Each call runs in a thread of its own: a pool shared by every run let one user's slow calls
    fill it, and the others' calls then waited for a thread until their timeout. What bounds
    the threads instead is these counts, and a call holds its slots until its function returns,
    not until its caller gives up on it: a thread cannot be killed, so a call that timed out
    still holds one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held = Counter()

    def take(self, user, run):
        """None if the call may start (its slots are then taken), else the reason it may not."""
        limits = (
            (("user", user), settings.TOOLS_MAX_CALLS_PER_USER),
            (("run", run), settings.TOOLS_MAX_CALLS_PER_RUN),
        )
        with self._lock:
            for (kind, key), limit in limits:
                if self._held[kind, key] >= limit:
                    return (
                        f"too many tool calls in progress for this {kind} (at most {limit} at"
                        " once): wait for one to finish"
                    )
            for (kind, key), _ in limits:
                self._held[kind, key] += 1
        return None

    def give(self, user, run):
        with self._lock:
            for key in (("user", user), ("run", run)):
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]  # so that ended runs leave nothing behind


_slots = _Slots()


def check_schema(parameters):
    """Raise SchemaError unless `parameters` is a JSON Schema of an object."""
    jsonschema.Draft202012Validator.check_schema(parameters)
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise SchemaError("the parameters must be an object")


def register(
    name, description, parameters, *, timeout=10, max_output=DEFAULT_MAX_OUTPUT, repeatable=False
):
    """Decorator: make the function callable by agents as the tool `name`. `repeatable`: it
    only reads, so it may be called again when a lost worker left a call without its result."""
    # A broken schema is a programming error: fail at import, not on the model's first call.
    check_schema(parameters)

    def decorator(func):
        if name in _registry:
            raise ValueError(f"a tool named {name!r} is already registered")
        _registry[name] = Tool(
            name, description, parameters, func, timeout, max_output, repeatable=repeatable
        )
        return func

    return decorator


def unregister(name):
    _registry.pop(name, None)


def get(name) -> Tool | None:
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)


def schemas(names) -> list[dict]:
    """The tools among `names` (or those of a toolbox, a mapping of names to tools) in the
    OpenAI function format, in the order given."""
    found = names.values() if isinstance(names, Mapping) else map(_registry.get, names)
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in found
        if tool is not None
    ]


def call(name, arguments, *, allowed, user, run, stop=None) -> ToolResult:
    """Run the tool `name` with the JSON `arguments` the model wrote; problems come back as errors.

    `allowed` is what the agent may call: names of registered tools, or a toolbox (a mapping of
    names to tools, agents.toolbox.for_agent), which may hold MCP servers' tools.
    `user` and `run` (ids) are whose call it is: each has a bound on its calls in progress.
    When `stop` (a StopSignal) is set the call returns at once, its tool left to finish alone.
    The error text goes back to the model, so it says what was wrong in words the model can act on.
    """
    began = time.monotonic()
    try:
        result, outcome = _call(name, arguments, allowed, user, run, stop)
    except Exception as exc:  # the agent loop must survive anything a tool call does
        logger.exception("tool %r failed unexpectedly", name)
        result, outcome = _error(f"{type(exc).__name__}: {exc}"), "error"
    tool = name if isinstance(name, str) and name in allowed else "unknown"
    CALLS.inc(tool=tool, outcome=outcome)
    DURATION.observe(time.monotonic() - began, tool=tool)
    return result


def check(name, arguments, allowed):
    """The tool `name` among `allowed` (as `call` takes it) and the arguments the JSON text
    `arguments` holds, or the ToolResult (an error) that says why the call cannot be made."""
    if isinstance(allowed, Mapping):
        tool = allowed.get(name)
    else:
        tool = _registry.get(name) if name in allowed else None
    if tool is None:
        if name in _registry:
            return _error(f"tool {name!r} is not allowed for this agent")
        return _error(f"unknown tool {name!r}")

    # Some models send an empty string for a tool that takes no arguments.
    if isinstance(arguments, str) and not arguments.strip():
        arguments = "{}"
    try:
        args = json.loads(arguments)
    except (TypeError, ValueError) as exc:
        return _error(f"arguments are not valid JSON: {exc}")
    if not isinstance(args, dict):
        return _error(f"arguments must be a JSON object, not {type(args).__name__}")
    problem = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(tool.parameters).iter_errors(args)
    )
    if problem is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.path)
        return _error(f"arguments{where}: {_shorten(problem.message)}")
    return tool, args


def _call(name, arguments, allowed, user, run, stop):
    """The call's result, and its outcome for relay_tool_calls_total."""
    checked = check(name, arguments, allowed)
    if isinstance(checked, ToolResult):
        return checked, "invalid"
    tool, args = checked
    problem = _slots.take(user, run)
    if problem is not None:
        return _error(problem), "busy"
    # a stoppable tool takes its arguments whole: one of them may be called `stop`
    work = (lambda: tool.func(args, stop)) if tool.stoppable else (lambda: tool.func(**args))
    future = _start(tool, work, user, run)
    woken = threading.Event()
    future.add_done_callback(lambda _: woken.set())
    forget = stop.on_stop(woken.set) if stop is not None else lambda: None
    try:
        woken.wait(tool.timeout)  # from the tool's start: no time waiting for a thread
    finally:
        forget()
    if not future.done():
        # The call is left to finish on its own, and its result dropped.
        if stop is not None and stop.is_set():
            return _error("the run was stopped"), "stopped"
        return _error(f"timed out after {tool.timeout:g} s"), "timeout"
    exc = future.exception()
    if exc is not None:
        return _error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), "error"

    value = future.result()
    try:
        output = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return _error(f"the tool returned a value that is not JSON: {exc}"), "error"
    if len(output) > tool.max_output:
        output = output[: tool.max_output] + f"\n[output truncated: {len(output)} characters]"
    return ToolResult(output=output, error=None), "ok"


def _start(tool, work, user, run):
    future = Future()

    def target():
        try:
            value, exc = work(), None
        except BaseException as error:  # whatever it is, the caller reports it
            value, exc = None, error
        # the slots first: a caller that has the result may call again at once
        _slots.give(user, run)
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    # daemon: a tool that never returns must not keep the worker from exiting
    thread = threading.Thread(target=target, name=f"tool-{tool.name}", daemon=True)
    try:
        thread.start()
    except BaseException:  # no thread, so nobody else gives the slots back
        _slots.give(user, run)
        raise
    return future


def _error(message):
    return ToolResult(output=None, error=message)


def _shorten(text, limit=300):
    # Schema messages quote the offending value, which may be as long as the model made it.
    return text if len(text) <= limit else text[: limit - 3] + "..."


from . import builtin  # noqa: E402, F401  (registers the built-in tools)
