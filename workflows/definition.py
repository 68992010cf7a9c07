"""Workflow definitions: validation, input checks, template rendering and conditions.

A definition is JSON a user writes once and runs many times (the format is in
docs/workflows.md, its shape in definition.schema.json, served at /api/workflows/schema/).
Nothing in it can execute code: a template has exactly two forms, `{{ inputs.NAME }}` and
`{{ steps.ID.output }}`, with no attributes, calls or filters to reach Python through, and a
condition is a tree of JSON operators evaluated here.
"""

import copy
import json
import math
import operator
import re
from pathlib import Path

from django.conf import settings
from jsonschema import Draft202012Validator, validators

from agents import tools

SCHEMA = json.loads(Path(__file__).with_name("definition.schema.json").read_text())
INPUT_TYPES = tuple(SCHEMA["$defs"]["input"]["properties"]["type"]["enum"])
STEP_TYPES = tuple(SCHEMA["$defs"]["step"]["properties"]["type"]["enum"])
COMPARISONS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
BINARY = ("equals", "contains", *COMPARISONS)

MAX_DEPTH = 20  # of an expression: deeper is no condition a person writes, and recursion ends
_WHY = "the most a message may have"
_EXPECTED = {"string": "a string", "number": "a number", "boolean": "true or false"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Anything that opens template syntax, closed or not; _REFERENCE then says whether it is one of
# the two allowed forms. Whatever else a user writes between the braces is an error.
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[{%].*", re.DOTALL)
_REFERENCE = re.compile(
    r"\{\{\s*(?:inputs\.(?P<input>[A-Za-z_][A-Za-z0-9_]*)"
    r"|steps\.(?P<step>[A-Za-z_][A-Za-z0-9_]*)\.output)\s*\}\}"
)
# To JSON Schema, 3.0 is an integer; an agent id written so was refused before, and still is.
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_VALIDATOR = validators.extend(Draft202012Validator, type_checker=_TYPES)(SCHEMA)


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
    definition, too_deep = _cut(definition)
    errors = _shape_errors(definition, too_deep)
    if isinstance(definition, dict):
        errors += _Checks(definition, agent_ids).errors
    # In the order of the document; sorted() is stable: errors at one place keep theirs.
    return [_error(_path(parts), message) for parts, message in sorted(errors, key=_position)]


def _shape_errors(definition, too_deep):
    """The schema's errors and those of `too_deep` ({path parts: message}), as [(path parts,
    message)]: one per path, the first the schema gives."""
    errors = dict(too_deep)
    for error in _VALIDATOR.iter_errors(definition):
        for parts, message in _messages(error):
            errors.setdefault(parts, message)
    # An error at a place hides the schema's errors inside it, as the hand-written check did: an
    # expression with two operators is that error, not another for each operator's operands.
    return [
        (parts, message)
        for parts, message in errors.items()
        if not any(parts[:n] in errors for n in range(len(parts)))
    ]


def _messages(error):
    path = tuple(error.absolute_path)
    if error.validator == "required":
        # At the missing key. jsonschema gives an error for each without saying which: all of
        # them each time, and _shape_errors keeps one of each.
        missing = [key for key in error.validator_value if key not in error.instance]
        return [((*path, key), "this field is required") for key in missing]
    if error.validator == "additionalProperties":  # one error for all the unknown keys
        unknown = [key for key in error.instance if key not in error.schema["properties"]]
        return [((*path, _Key(key)), f"unknown key {key!r}") for key in unknown]
    if "errorMessage" in error.schema:
        return [(path, error.schema["errorMessage"])]
    if error.validator == "enum":
        expected = "expected one of " + ", ".join(error.validator_value)
        if list(error.relative_schema_path)[-2:-1] == ["propertyNames"]:  # a key, not a value
            expected = f"unknown {error.schema['title']} {error.instance!r}: {expected}"
        return [(path, expected)]
    return [(path, error.message)]  # none in the schema today: each has its message


# The order of errors: a list's items by position, an object's keys as the format lists them,
# what is inside a place before the place itself. The keys it does not list (_Key, None here)
# come first but for a step's id, as the hand-written check had them.
_KEYS = ("id", None, "inputs", "steps", "name", "type", "required", "default", "description")
_KEYS += ("prompt", "agent", "tool", "arguments", "when", "guards")


class _Key(str):
    """A key of the user's, not the format's: an unknown key, a tool argument's name."""


def _position(error):
    parts, _ = error
    return [*map(_rank, parts), math.inf]  # a place after what is inside it


def _rank(part):
    if isinstance(part, int):
        return part  # an index: compared with the other items' at the same place
    return _KEYS.index(None if isinstance(part, _Key) or part not in _KEYS else part)


class _Checks:
    """What a schema cannot say: that names are unique and references name them, templates,
    guards, tools and their argument names, agents of the user's, sizes. It runs beside the
    schema, so that every error is reported at once, and looks only at what has the right shape
    (the rest is the schema's to report)."""

    def __init__(self, definition, agent_ids):
        self.agent_ids = agent_ids
        self.errors = []
        self.inputs = set()
        self.positions = {}  # step id -> index of its first occurrence
        for i, spec in enumerate(_items(definition.get("inputs"))):
            if isinstance(spec, dict):
                self.input(spec, ("inputs", i))
        steps = _items(definition.get("steps"))
        # Where every id is, first: a reference must be told unknown from later.
        for i, step in enumerate(steps):
            if isinstance(step, dict) and _is_identifier(step.get("id")):
                self.positions.setdefault(step["id"], i)
        for i, step in enumerate(steps):
            self.index = i  # of the step being checked
            if isinstance(step, dict):
                self.step(step, ("steps", i))

    def add(self, path, message):
        self.errors.append((path, message))

    def input(self, spec, path):
        name, kind = spec.get("name"), spec.get("type")
        if _is_identifier(name):
            if name in self.inputs:
                self.add((*path, "name"), f"duplicate input name {name!r}")
            self.inputs.add(name)
        if "default" not in spec or spec.get("required") is True or kind not in INPUT_TYPES:
            return
        default, limit = spec["default"], settings.RUN_MESSAGE_MAX_BYTES
        if _matches(kind, default) and (size := _size(_text(default))) > limit:
            self.add(
                (*path, "default"), f"the default is {size} bytes, more than the limit of {limit}"
            )

    def step(self, step, path):
        step_id, kind = step.get("id"), step.get("type")
        if _is_identifier(step_id) and self.positions[step_id] != self.index:
            self.add((*path, "id"), f"duplicate step id {step_id!r}")
        if kind in STEP_TYPES:
            getattr(self, f"{kind}_step")(step, path)

    def agent_step(self, step, path):
        if isinstance(prompt := step.get("prompt"), str):
            self.template(prompt, (*path, "prompt"))
        agent = step.get("agent")
        if self.agent_ids is None or not _TYPES.is_type(agent, "integer"):
            return
        if agent not in self.agent_ids:
            self.add((*path, "agent"), f"unknown agent {agent}")

    def tool_step(self, step, path):
        name = step.get("tool")
        tool = tools.get(name) if isinstance(name, str) else None
        if isinstance(name, str) and tool is None:
            self.add((*path, "tool"), f"unknown tool {name!r}")
        arguments = step.get("arguments", {})
        if not isinstance(arguments, dict):
            return
        for key, value in arguments.items():
            if isinstance(value, str):
                self.template(value, (*path, "arguments", _Key(key)))
        if tool is None:
            return
        # Names only: a template renders to a string whatever type the schema asks for, so the
        # values are checked by the tool call at run time.
        properties = tool.parameters.get("properties")
        if properties is not None and not tool.parameters.get("additionalProperties"):
            for key in arguments:
                if key not in properties:
                    where = (*path, "arguments", _Key(key))
                    self.add(where, f"unknown argument {key!r} for {name!r}")
        for key in tool.parameters.get("required", []):
            if key not in arguments:
                self.add((*path, "arguments"), f"missing required argument {key!r} for {name!r}")

    def condition_step(self, step, path):
        if "when" in step:
            self.expression(step["when"], (*path, "when"))
        for i, guard in enumerate(_items(step.get("guards"))):
            where = self.positions.get(guard) if isinstance(guard, str) else None
            if where is None:
                self.add((*path, "guards", i), f"unknown step {guard!r}")
            elif where <= self.index:
                self.add((*path, "guards", i), f"{guard!r} is not a later step")

    def expression(self, expression, path):
        # The operands of an expression of the right shape: the schema checks the shape.
        if not isinstance(expression, dict) or len(expression) != 1:
            return
        ((name, operands),) = expression.items()
        path = (*path, name)
        if name == "not":
            self.expression(operands, path)
        elif name in ("and", "or"):
            for i, operand in enumerate(_items(operands)):
                self.expression(operand, (*path, i))
        elif name in BINARY and isinstance(operands, list) and len(operands) == 2:
            for i, operand in enumerate(operands):
                self.operand(name, operand, (*path, i))

    def operand(self, name, operand, path):
        if isinstance(operand, str):
            self.template(operand, path)
            if any(kind != "text" for kind, _ in _parse(operand)):
                return  # its value is known at run time only
        if name in COMPARISONS and not isinstance(operand, dict):
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


def _cut(definition):
    """The definition with each expression deeper than MAX_DEPTH replaced by one that holds, and
    an error for each: a schema cannot count levels, and would recurse as deep as they go."""
    errors = {}
    if isinstance(definition, dict) and isinstance(definition.get("steps"), list):
        steps = [
            {**step, "when": _cut_expression(step["when"], ("steps", i, "when"), errors)}
            if isinstance(step, dict) and "when" in step
            else step
            for i, step in enumerate(definition["steps"])
        ]
        definition = {**definition, "steps": steps}
    return definition, errors


def _cut_expression(expression, path, errors, depth=1):
    if depth > MAX_DEPTH:
        errors[path] = f"the expression is nested too deeply (at most {MAX_DEPTH} levels)"
        return {"equals": [0, 0]}
    if not isinstance(expression, dict):
        return expression
    cut = dict(expression)
    # where the schema looks: into each operator of an object that has several, too
    for name, operands in expression.items():
        if name == "not" and not isinstance(operands, list):
            cut[name] = _cut_expression(operands, (*path, name), errors, depth + 1)
        elif name in ("and", "or") and isinstance(operands, list):
            cut[name] = [
                _cut_expression(operand, (*path, name, i), errors, depth + 1)
                for i, operand in enumerate(operands)
            ]
    return cut


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


def _path(parts):
    """("steps", 2, "prompt") as "steps[2].prompt"; () as "", the definition as a whole."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def _items(value):
    # a list the schema may have refused, as far as a check that looks at its items goes
    return value if isinstance(value, list) else []


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
