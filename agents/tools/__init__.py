"""Tools an agent may call: named functions with JSON-schema parameters, run with a time limit."""

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import jsonschema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    func: Callable[..., Any]
    timeout: float = 10  # seconds
    max_output: int = 16000  # characters


@dataclass(frozen=True)
class ToolResult:
    output: str | None
    error: str | None


_registry: dict[str, Tool] = {}

# Shared by every run in the worker. It is bounded so that tools which never return cannot
# take ever more threads: once it is full, new calls wait for a thread and time out instead.
_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="agent-tool")


def register(name, description, parameters, *, timeout=10, max_output=16000):
    """Decorator: make the function callable by agents as the tool `name`."""
    # A broken schema is a programming error: fail at import, not on the model's first call.
    jsonschema.Draft202012Validator.check_schema(parameters)

    def decorator(func):
        if name in _registry:
            raise ValueError(f"a tool named {name!r} is already registered")
        _registry[name] = Tool(name, description, parameters, func, timeout, max_output)
        return func

    return decorator


def unregister(name):
    _registry.pop(name, None)


def get(name) -> Tool | None:
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)


def schemas(names) -> list[dict]:
    """The tools among `names` in the OpenAI function format, in the order given."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in map(_registry.get, names)
        if tool is not None
    ]


def call(name, arguments, *, allowed) -> ToolResult:
    """Run the tool `name` with the JSON `arguments` the model wrote; problems come back as errors.

    The error text goes back to the model, so it says what was wrong in words the model can act on.
    """
    try:
        return _call(name, arguments, allowed)
    except Exception as exc:  # the agent loop must survive anything a tool call does
        logger.exception("tool %r failed unexpectedly", name)
        return _error(f"{type(exc).__name__}: {exc}")


def _call(name, arguments, allowed):
    tool = _registry.get(name)
    if tool is None:
        return _error(f"unknown tool {name!r}")
    if name not in allowed:
        return _error(f"tool {name!r} is not allowed for this agent")

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

    future = _executor.submit(tool.func, **args)
    done, _ = wait([future], timeout=tool.timeout)
    if not done:
        # A thread cannot be killed: the call is left to finish on its own and its result dropped.
        future.cancel()  # it may still be waiting for a thread, and then it never starts
        return _error(f"timed out after {tool.timeout:g} s")
    exc = future.exception()
    if exc is not None:
        return _error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    value = future.result()
    try:
        output = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return _error(f"the tool returned a value that is not JSON: {exc}")
    if len(output) > tool.max_output:
        output = output[: tool.max_output] + f"\n[output truncated: {len(output)} characters]"
    return ToolResult(output=output, error=None)


def _error(message):
    return ToolResult(output=None, error=message)


def _shorten(text, limit=300):
    # Schema messages quote the offending value, which may be as long as the model made it.
    return text if len(text) <= limit else text[: limit - 3] + "..."


from . import builtin  # noqa: E402, F401  (registers the built-in tools)
