"""Workflow definitions: validation, input checks, template rendering and conditions.

A definition is JSON a user writes once and runs many times (the format is in
docs/workflows.md). Nothing in it can execute code: a template has exactly two forms,
`{{ inputs.NAME }}` and `{{ steps.ID.output }}`, with no attributes, calls or filters to reach
Python through, and a condition is a tree of JSON operators evaluated here.
"""

import copy
import json
import math
import operator
import re

from django.conf import settings

from agents import tools

INPUT_TYPES = ("string", "number", "boolean", "json")
STEP_TYPES = ("agent", "tool", "condition")
COMPARISONS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
BINARY = ("equals", "contains", *COMPARISONS)
OPERATORS = (*BINARY, "and", "or", "not")

_TOP_KEYS = {"inputs", "steps"}
_INPUT_KEYS = {"name", "type", "required", "default", "description"}
_STEP_KEYS = {
    "agent": {"id", "type", "prompt", "agent"},
    "tool": {"id", "type", "tool", "arguments"},
    "condition": {"id", "type", "when", "guards"},
}
MAX_DEPTH = 20  # of an expression: deeper is no condition a person writes, and recursion ends
_WHY = "the most a message may have"
_NOT_IDENTIFIER = "expected an identifier: letters, digits and _, not starting with a digit"
_EXPECTED = {"string": "a string", "number": "a number", "boolean": "true or false"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Anything that opens template syntax, closed or not; _REFERENCE then says whether it is one of
# the two allowed forms. Whatever else a user writes between the braces is an error.
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[{%].*", re.DOTALL)
_REFERENCE = re.compile(
    r"\{\{\s*(?:inputs\.(?P<input>[A-Za-z_][A-Za-z0-9_]*)"
    r"|steps\.(?P<step>[A-Za-z_][A-Za-z0-9_]*)\.output)\s*\}\}"
)


class ConditionError(Exception):
    """A condition cannot be evaluated with the values it got at run time."""


class TooLong(ValueError):
    """A template would render to more than a message may hold (RUN_MESSAGE_MAX_BYTES)."""


# Validation


def validate(definition, *, agent_ids=None):
    """Every error in `definition`, as [{"path", "message"}]; empty if it is valid.

    `agent_ids`: the agent ids an agent step may name, or None not to check them.
    """
    limit = getattr(settings, "WORKFLOW_MAX_BYTES", 65536)
    try:
        size = len(_json(definition).encode())
    except (TypeError, ValueError, RecursionError):
        return [_error("", "the definition is not JSON, or nested too deeply")]
    if size > limit:
        # Not looked into further: validating it would cost what the limit is there to prevent.
        return [_error("", f"the definition is {size} bytes, more than the limit of {limit}")]
    if not isinstance(definition, dict):
        return [_error("", "a definition is a JSON object with inputs and steps")]
    return _Validator(agent_ids).definition(definition)


class _Validator:
    def __init__(self, agent_ids):
        self.agent_ids = agent_ids
        self.errors = []
        self.inputs = set()
        self.positions = {}  # step id -> index of its first occurrence
        self.index = 0  # of the step being checked

    def add(self, path, message):
        self.errors.append(_error(path, message))

    def definition(self, definition):
        self.unknown_keys(definition, _TOP_KEYS, "")
        inputs = definition.get("inputs", [])
        if isinstance(inputs, list):
            for i, spec in enumerate(inputs):
                self.input(spec, f"inputs[{i}]")
        else:
            self.add("inputs", "inputs must be a list")
        steps = definition.get("steps")
        if "steps" not in definition:
            self.add("steps", "this field is required")
        elif not isinstance(steps, list):
            self.add("steps", "steps must be a list")
        elif not steps:
            self.add("steps", "a workflow needs at least one step")
        else:
            # Where every id is, first: a reference must be told unknown from later.
            for i, step in enumerate(steps):
                if isinstance(step, dict) and _is_identifier(step.get("id")):
                    self.positions.setdefault(step["id"], i)
            for i, step in enumerate(steps):
                self.index = i
                self.step(step, f"steps[{i}]")
        return self.errors

    def input(self, spec, path):
        if not isinstance(spec, dict):
            self.add(path, "an input is an object with a name and a type")
            return
        self.unknown_keys(spec, _INPUT_KEYS, path)
        name, kind = spec.get("name"), spec.get("type")
        if "name" not in spec:
            self.add(f"{path}.name", "this field is required")
        elif not _is_identifier(name):
            self.add(f"{path}.name", _NOT_IDENTIFIER)
        elif name in self.inputs:
            self.add(f"{path}.name", f"duplicate input name {name!r}")
        else:
            self.inputs.add(name)
        if "type" not in spec:
            self.add(f"{path}.type", "this field is required")
        elif kind not in INPUT_TYPES:
            self.add(f"{path}.type", "expected one of " + ", ".join(INPUT_TYPES))
        if not isinstance(spec.get("required", False), bool):
            self.add(f"{path}.required", "expected true or false")
        if "default" in spec:
            if spec.get("required") is True:
                self.add(f"{path}.default", "a required input cannot have a default")
            elif kind in INPUT_TYPES and not _matches(kind, spec["default"]):
                self.add(f"{path}.default", f"default must be {_EXPECTED[kind]}")
            elif (size := _size(_text(spec["default"]))) > settings.RUN_MESSAGE_MAX_BYTES:
                limit = settings.RUN_MESSAGE_MAX_BYTES
                self.add(
                    f"{path}.default",
                    f"the default is {size} bytes, more than the limit of {limit}",
                )
        if not isinstance(spec.get("description", ""), str):
            self.add(f"{path}.description", "expected a string")

    def step(self, step, path):
        if not isinstance(step, dict):
            self.add(path, "a step is an object with an id and a type")
            return
        step_id, kind = step.get("id"), step.get("type")
        if "id" not in step:
            self.add(f"{path}.id", "this field is required")
        elif not _is_identifier(step_id):
            self.add(f"{path}.id", _NOT_IDENTIFIER)
        elif self.positions[step_id] != self.index:
            self.add(f"{path}.id", f"duplicate step id {step_id!r}")
        if "type" not in step:
            self.add(f"{path}.type", "this field is required")
            return
        if kind not in STEP_TYPES:
            self.add(f"{path}.type", "expected one of " + ", ".join(STEP_TYPES))
            return
        self.unknown_keys(step, _STEP_KEYS[kind], path)
        getattr(self, f"{kind}_step")(step, path)

    def agent_step(self, step, path):
        prompt = step.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            self.add(f"{path}.prompt", "a prompt is required (a non-empty string)")
        else:
            self.template(prompt, f"{path}.prompt")
        if "agent" in step:
            agent = step["agent"]
            if isinstance(agent, bool) or not isinstance(agent, int):
                self.add(f"{path}.agent", "expected an agent id (an integer)")
            elif self.agent_ids is not None and agent not in self.agent_ids:
                self.add(f"{path}.agent", f"unknown agent {agent}")

    def tool_step(self, step, path):
        name = step.get("tool")
        tool = tools.get(name) if isinstance(name, str) else None
        if "tool" not in step:
            self.add(f"{path}.tool", "this field is required")
        elif tool is None:
            self.add(f"{path}.tool", f"unknown tool {name!r}")
        arguments = step.get("arguments", {})
        if not isinstance(arguments, dict):
            self.add(f"{path}.arguments", "arguments must be an object")
            return
        for key, value in arguments.items():
            if isinstance(value, str):
                self.template(value, f"{path}.arguments.{key}")
        if tool is None:
            return
        # Names only: a template renders to a string whatever type the schema asks for, so the
        # values are checked by the tool call at run time.
        properties = tool.parameters.get("properties")
        if properties is not None and not tool.parameters.get("additionalProperties"):
            for key in arguments:
                if key not in properties:
                    self.add(f"{path}.arguments.{key}", f"unknown argument {key!r} for {name!r}")
        for key in tool.parameters.get("required", []):
            if key not in arguments:
                self.add(f"{path}.arguments", f"missing required argument {key!r} for {name!r}")

    def condition_step(self, step, path):
        if "when" not in step:
            self.add(f"{path}.when", "this field is required")
        else:
            self.expression(step["when"], f"{path}.when")
        guards = step.get("guards", [])
        if not isinstance(guards, list):
            self.add(f"{path}.guards", "guards must be a list of step ids")
            return
        for i, guard in enumerate(guards):
            where = self.positions.get(guard) if isinstance(guard, str) else None
            if where is None:
                self.add(f"{path}.guards[{i}]", f"unknown step {guard!r}")
            elif where <= self.index:
                self.add(f"{path}.guards[{i}]", f"{guard!r} is not a later step")

    def expression(self, expression, path, depth=1):
        if depth > MAX_DEPTH:
            self.add(path, f"the expression is nested too deeply (at most {MAX_DEPTH} levels)")
            return
        if not isinstance(expression, dict) or len(expression) != 1:
            self.add(path, 'an expression is an object with one operator, like {"equals": [a, b]}')
            return
        ((name, operands),) = expression.items()
        if name not in OPERATORS:
            self.add(path, f"unknown operator {name!r}: expected one of {', '.join(OPERATORS)}")
            return
        path = f"{path}.{name}"
        if name == "not":
            if isinstance(operands, list):
                self.add(path, "not takes one expression, not a list")
            else:
                self.expression(operands, path, depth + 1)
        elif name in ("and", "or"):
            if not isinstance(operands, list) or not operands:
                self.add(path, f"{name} takes a list of one or more expressions")
                return
            for i, operand in enumerate(operands):
                self.expression(operand, f"{path}[{i}]", depth + 1)
        elif not isinstance(operands, list) or len(operands) != 2:
            self.add(path, f"{name} takes a list of two operands")
        else:
            for i, operand in enumerate(operands):
                self.operand(name, operand, f"{path}[{i}]")

    def operand(self, name, operand, path):
        if isinstance(operand, dict):
            # Most likely an expression where a value belongs; a literal object is never needed.
            self.add(path, "an operand is a string, number, boolean, null or list, not an object")
            return
        if isinstance(operand, str):
            self.template(operand, path)
            if any(kind != "text" for kind, _ in _parse(operand)):
                return  # its value is known at run time only
        if name in COMPARISONS:
            try:
                _number(name, operand)
            except ConditionError as exc:
                self.add(path, str(exc))

    def template(self, text, path):
        for kind, value in _parse(text):
            if kind == "bad":
                self.add(path, f"malformed template: {value}")
            elif kind == "inputs" and value not in self.inputs:
                self.add(path, f"unknown input {value!r}")
            elif kind == "steps":
                where = self.positions.get(value)
                reference = f"'steps.{value}.output'"
                if where is None:
                    self.add(path, f"unknown step {value!r}")
                elif where == self.index:
                    self.add(path, f"{reference} refers to this step itself")
                elif where > self.index:
                    self.add(path, f"{reference} refers to a later step")

    def unknown_keys(self, obj, allowed, path):
        for key in obj:
            if key not in allowed:
                self.add(f"{path}.{key}" if path else key, f"unknown key {key!r}")


# Inputs


def check_inputs(definition, values):
    """The run's input values checked against the declaration: (values with defaults, errors).

    Every declared input is in the values; one not given and without a default is None. The
    inputs are bounded like a message is (RUN_MESSAGE_MAX_BYTES), one by one and together, and
    so is every prompt and every step's arguments they render into.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        return {}, [_error("inputs", "expected an object of input values")]
    declared = {spec["name"]: spec for spec in definition.get("inputs", [])}
    errors = [
        _error(f"inputs.{name}", f"unknown input {name!r}")
        for name in values
        if name not in declared
    ]
    normalized = {}
    for name, spec in declared.items():
        value = values.get(name)
        # A form sends null for a field left empty; for a json input null is a value like any.
        if name not in values or (value is None and spec["type"] != "json"):
            if spec.get("required"):
                errors.append(_error(f"inputs.{name}", "this input is required"))
            else:
                normalized[name] = copy.deepcopy(spec.get("default"))  # runs must not share one
        elif not _matches(spec["type"], value):
            errors.append(_error(f"inputs.{name}", f"expected {_EXPECTED[spec['type']]}"))
        else:
            normalized[name] = value
    return normalized, errors or _size_errors(definition, normalized)


def _size_errors(definition, values):
    limit = settings.RUN_MESSAGE_MAX_BYTES
    errors = [
        _error(f"inputs.{name}", f"this input is {size} bytes, more than the limit of {limit}")
        for name, value in values.items()
        if (size := _size(_text(value))) > limit
    ]
    if not errors and (size := _size(_json(values))) > limit:
        errors.append(
            _error("inputs", f"the inputs are {size} bytes as JSON, more than the limit of {limit}")
        )
    if errors:
        return errors
    # What no run with these values could do. The steps' outputs are not known yet and render
    # empty, so this is a lower bound: the rest is checked as each step renders (WorkflowLoop).
    context = {"inputs": values, "steps": {}}
    for i, step in enumerate(definition.get("steps", [])):
        try:
            if step.get("type") == "agent":
                path = f"steps[{i}].prompt"
                render(step.get("prompt", ""), context)
            elif step.get("type") == "tool":
                path = f"steps[{i}].arguments"
                render_arguments(step.get("arguments"), context)
        except TooLong as exc:
            errors.append(_error(path, f"with these inputs, {exc}"))
    return errors


def _matches(kind, value):
    if kind == "number":
        # bool is an int to Python, but true is not a number a user meant to give.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    return True  # json: anything the request could hold


# Templates


def render(template, context, *, limit=None):
    """`template` with its references replaced from {"inputs": {...}, "steps": {id: output}}.

    A reference with no value (a skipped step, an optional input not given) renders empty.
    TooLong when the result would be more than `limit` bytes (by default the message limit):
    one reference repeated can multiply an input thousands of times, so the text is measured
    as it is built and never grows past the limit.
    """
    limit = settings.RUN_MESSAGE_MAX_BYTES if limit is None else limit
    parts, size = [], 0
    for kind, value in _parse(template):
        if kind == "bad":
            raise ValueError(f"malformed template: {value}")
        text = value if kind == "text" else _text(_lookup(kind, value, context))
        # more characters than the bytes left is too long already, with no need to encode it
        size += len(text) if len(text) > limit - size else _size(text)
        if size > limit:
            raise TooLong(f"the rendered text would be more than {limit} bytes, {_WHY}")
        parts.append(text)
    return "".join(parts)


def render_arguments(arguments, context):
    """A tool step's arguments: strings rendered as templates, other values as written. All the
    strings together are bounded by the message limit (TooLong)."""
    limit = left = settings.RUN_MESSAGE_MAX_BYTES
    rendered = {}
    for key, value in (arguments or {}).items():
        if isinstance(value, str):
            try:
                value = render(value, context, limit=left)
            except TooLong:
                message = f"the rendered arguments would be more than {limit} bytes, {_WHY}"
                raise TooLong(message) from None
            left -= _size(value)
        rendered[key] = value
    return rendered


def _parse(template):
    """The template as ("text", str), ("inputs", name), ("steps", id) and ("bad", source)."""
    parts, end = [], 0
    for match in _TAG.finditer(template):
        parts.append(("text", template[end : match.start()]))
        reference = _REFERENCE.fullmatch(match.group())
        if reference is None:
            parts.append(("bad", _shorten(match.group())))
        elif reference["input"]:
            parts.append(("inputs", reference["input"]))
        else:
            parts.append(("steps", reference["step"]))
        end = match.end()
    parts.append(("text", template[end:]))
    return [part for part in parts if part != ("text", "")]


def _lookup(kind, name, context):
    return (context.get(kind) or {}).get(name)


def _text(value):
    if value is None:
        return ""
    return value if isinstance(value, str) else _json(value)


# Conditions


def evaluate(expression, context):
    """Whether the condition holds; ConditionError if it cannot be decided."""
    if not isinstance(expression, dict) or len(expression) != 1:
        raise ConditionError("an expression is an object with exactly one operator")
    ((name, operands),) = expression.items()
    if name == "not":
        return not evaluate(operands, context)
    if name in ("and", "or"):
        if not isinstance(operands, list) or not operands:
            raise ConditionError(f"{name} takes a list of one or more expressions")
        results = (evaluate(operand, context) for operand in operands)
        return all(results) if name == "and" else any(results)  # both stop at the first answer
    if name not in BINARY:
        raise ConditionError(f"unknown operator {name!r}")
    if not isinstance(operands, list) or len(operands) != 2:
        raise ConditionError(f"{name} takes a list of two operands")
    left, right = (_operand(operand, context) for operand in operands)
    if name == "equals":
        return _equals(left, right)
    if name == "contains":
        if isinstance(left, str):
            return _text(right) in left
        if isinstance(left, list):
            return any(_equals(item, right) for item in left)
        raise ConditionError(f"contains looks in a string or a list, not in {_shown(left)}")
    return COMPARISONS[name](_number(name, left), _number(name, right))


def _operand(operand, context):
    if not isinstance(operand, str):
        return operand
    parts = _parse(operand)
    # A lone reference keeps its value, so a number or a list from a json input stays one.
    if len(parts) == 1 and parts[0][0] in ("inputs", "steps"):
        return _lookup(*parts[0], context)
    try:
        return render(operand, context)
    except ValueError as exc:
        raise ConditionError(str(exc)) from None


def _equals(left, right):
    if isinstance(left, str) != isinstance(right, str):
        # Tool and agent outputs are text: "11" from the calculator equals the 11 written here.
        return _text(left) == _text(right)
    if isinstance(left, bool) != isinstance(right, bool):
        return False  # true == 1 to Python, not in JSON
    return left == right


def _number(name, value):
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            pass
        else:
            if math.isfinite(number):
                return number
    raise ConditionError(f"{name} compares numbers, and {_shown(value)} is not a number")


# Helpers


def guarded_steps(definition, index):
    """The ids of the steps the condition step at `index` guards: by default all after it."""
    steps = definition["steps"]
    if "guards" in steps[index]:
        return list(steps[index]["guards"])
    return [step["id"] for step in steps[index + 1 :]]


def _error(path, message):
    return {"path": path, "message": message}


def _is_identifier(value):
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


def _size(text):
    # in UTF-8, as the message limit counts; a lone surrogate is for the input checks to refuse
    return len(text.encode("utf-8", "surrogatepass"))


def _json(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _shown(value):
    return _shorten(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _shorten(text, limit=80):
    # Messages quote what the user wrote, which may be as long as they made it.
    return text if len(text) <= limit else text[: limit - 3] + "..."
