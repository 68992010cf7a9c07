"""Tests for workflow definitions: validation, input checks, templates and conditions."""

import copy
import tracemalloc

import jsonschema
import pytest
from rest_framework.test import APIClient

from workflows.definition import (
    BINARY,
    SCHEMA,
    ConditionError,
    TooLong,
    check_inputs,
    evaluate,
    guarded_steps,
    render,
    render_arguments,
    validate,
)

EXAMPLE = {
    "inputs": [
        {"name": "a", "type": "number", "required": True, "description": "first number"},
        {"name": "topic", "type": "string", "default": "numbers"},
        {"name": "verbose", "type": "boolean", "default": False},
        {"name": "extra", "type": "json"},
    ],
    "steps": [
        {
            "id": "sum",
            "type": "tool",
            "tool": "calculator",
            "arguments": {"expression": "{{ inputs.a }} + 1"},
        },
        {
            "id": "big",
            "type": "condition",
            "when": {"gt": ["{{ steps.sum.output }}", 10]},
            "guards": ["explain"],
        },
        {
            "id": "explain",
            "type": "agent",
            "prompt": "Explain {{ steps.sum.output }} about {{ inputs.topic }}",
            "agent": 3,
        },
        {"id": "done", "type": "agent", "prompt": "Say done"},
    ],
}


def errors(definition, **options):
    return [(e["path"], e["message"]) for e in validate(definition, **options)]


def with_steps(*steps, inputs=()):
    return {"inputs": list(inputs), "steps": list(steps)}


def agent(step_id, prompt="Hello"):
    return {"id": step_id, "type": "agent", "prompt": prompt}


def condition(step_id, when, **extra):
    return {"id": step_id, "type": "condition", "when": when, **extra}


A = {"name": "a", "type": "number"}


# validate: valid definitions


def test_it_accepts_the_example():
    assert validate(EXAMPLE) == []
    assert validate(EXAMPLE, agent_ids={3}) == []


def test_it_accepts_a_minimal_definition_and_whitespace_in_braces():
    assert validate({"steps": [agent("s", "{{inputs.a}} {{   inputs.a\t}}")], "inputs": [A]}) == []


# the schema


def test_the_schema_is_a_json_schema_with_the_operators_conditions_evaluate():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    expression = SCHEMA["$defs"]["expression"]
    operators = [*BINARY, "and", "or", "not"]
    assert expression["propertyNames"]["enum"] == list(expression["properties"]) == operators
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(EXAMPLE)


@pytest.mark.django_db
def test_it_serves_the_schema_to_editors_without_login():
    response = APIClient().get("/api/workflows/schema/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == SCHEMA


# validate: the shape


def test_it_rejects_a_definition_that_is_not_an_object():
    assert errors([]) == [("", "a definition is a JSON object with inputs and steps")]


def test_it_rejects_missing_steps():
    assert errors({"inputs": []}) == [("steps", "this field is required")]


def test_it_rejects_steps_that_are_not_a_list():
    assert errors({"steps": {"id": "s"}}) == [("steps", "steps must be a list")]


def test_it_rejects_empty_steps():
    assert errors({"steps": []}) == [("steps", "a workflow needs at least one step")]


def test_it_rejects_a_definition_over_the_size_limit(settings):
    settings.WORKFLOW_MAX_BYTES = 100
    big = with_steps(agent("s", "x" * 200))
    [(path, message)] = errors(big)
    assert path == ""
    assert "limit of 100" in message
    assert errors(with_steps(agent("s", "x"))) == []


def test_it_rejects_unknown_keys_everywhere():
    definition = {
        "steps": [
            {"id": "s", "type": "agent", "prompt": "hi", "tool": "calculator"},
            {"id": "t", "type": "tool", "tool": "current_time", "prompt": "hi"},
            condition("c", {"equals": [1, 1]}, arguments={}),
        ],
        "inputs": [{"name": "a", "type": "string", "label": "A"}],
        "version": 2,
    }
    assert errors(definition) == [
        ("version", "unknown key 'version'"),
        ("inputs[0].label", "unknown key 'label'"),
        ("steps[0].tool", "unknown key 'tool'"),
        ("steps[1].prompt", "unknown key 'prompt'"),
        ("steps[2].arguments", "unknown key 'arguments'"),
    ]


def test_it_reports_several_errors_at_once():
    definition = with_steps(
        agent("s", "{{ inputs.b }}"),
        agent("s", "{{ steps.nope.output }}"),
        {"id": "t", "type": "tool", "tool": "rm_rf"},
        inputs=[{"name": "a", "type": "integer"}],
    )
    assert errors(definition) == [
        ("inputs[0].type", "expected one of string, number, boolean, json"),
        ("steps[0].prompt", "unknown input 'b'"),
        ("steps[1].id", "duplicate step id 's'"),
        ("steps[1].prompt", "unknown step 'nope'"),
        ("steps[2].tool", "unknown tool 'rm_rf'"),
    ]


# validate: inputs


def test_it_rejects_a_wrong_input_type_declaration():
    definition = with_steps(agent("s"), inputs=[{"name": "a", "type": "int"}, {"name": "b"}])
    assert errors(definition) == [
        ("inputs[0].type", "expected one of string, number, boolean, json"),
        ("inputs[1].type", "this field is required"),
    ]


def test_it_rejects_a_default_of_the_wrong_type():
    definition = with_steps(
        agent("s"),
        inputs=[
            {"name": "a", "type": "number", "default": "3"},
            {"name": "b", "type": "number", "default": True},
            {"name": "c", "type": "boolean", "default": 0},
            {"name": "d", "type": "string", "default": 1},
            {"name": "e", "type": "json", "default": {"any": ["thing"]}},
        ],
    )
    assert errors(definition) == [
        ("inputs[0].default", "default must be a number"),
        ("inputs[1].default", "default must be a number"),
        ("inputs[2].default", "default must be true or false"),
        ("inputs[3].default", "default must be a string"),
    ]


def test_it_rejects_a_default_over_the_message_limit(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 10
    definition = with_steps(
        agent("s"), inputs=[{"name": "x", "type": "string", "default": "é" * 6}]
    )
    assert errors(definition) == [
        ("inputs[0].default", "the default is 12 bytes, more than the limit of 10")
    ]


def test_it_rejects_a_required_input_with_a_default():
    definition = with_steps(
        agent("s"), inputs=[{"name": "a", "type": "number", "required": True, "default": 1}]
    )
    assert errors(definition) == [("inputs[0].default", "a required input cannot have a default")]


def test_it_rejects_bad_input_names_and_fields():
    definition = with_steps(
        agent("s"),
        inputs=[
            {"name": "1a", "type": "string"},
            {"name": "a", "type": "string", "required": "yes", "description": 5},
            {"name": "a", "type": "number"},
            {"type": "string"},
            "b",
        ],
    )
    assert errors(definition) == [
        (
            "inputs[0].name",
            "expected an identifier: letters, digits and _, not starting with a digit",
        ),
        ("inputs[1].required", "expected true or false"),
        ("inputs[1].description", "expected a string"),
        ("inputs[2].name", "duplicate input name 'a'"),
        ("inputs[3].name", "this field is required"),
        ("inputs[4]", "an input is an object with a name and a type"),
    ]


# validate: steps


def test_it_rejects_what_json_schema_alone_would_take():
    # an id ending in a newline ($ matches before it in Python) and an agent id written 3.0
    definition = with_steps(
        {"id": "a\n", "type": "agent", "prompt": "hi"},
        {"id": "b", "type": "agent", "prompt": "hi", "agent": 3.0},
    )
    assert errors(definition, agent_ids={3}) == [
        ("steps[0].id", "expected an identifier: letters, digits and _, not starting with a digit"),
        ("steps[1].agent", "expected an agent id (an integer)"),
    ]


def test_it_rejects_a_duplicate_step_id():
    assert errors(with_steps(agent("sum"), agent("sum"))) == [
        ("steps[1].id", "duplicate step id 'sum'")
    ]


def test_it_rejects_bad_step_ids_and_types():
    definition = with_steps(
        {"type": "agent", "prompt": "hi"},
        {"id": "a-b", "type": "agent", "prompt": "hi"},
        {"id": "c", "type": "shell", "command": "ls"},
        {"id": "d"},
        "e",
    )
    assert errors(definition) == [
        ("steps[0].id", "this field is required"),
        ("steps[1].id", "expected an identifier: letters, digits and _, not starting with a digit"),
        ("steps[2].type", "expected one of agent, tool, condition"),
        ("steps[3].type", "this field is required"),
        ("steps[4]", "a step is an object with an id and a type"),
    ]


def test_it_rejects_an_agent_step_without_a_prompt_or_with_a_bad_agent():
    definition = with_steps(
        {"id": "a", "type": "agent"},
        {"id": "b", "type": "agent", "prompt": "  "},
        {"id": "c", "type": "agent", "prompt": "hi", "agent": "3"},
        {"id": "d", "type": "agent", "prompt": "hi", "agent": True},
    )
    assert errors(definition) == [
        ("steps[0].prompt", "this field is required"),  # as for every key the format requires
        ("steps[1].prompt", "a prompt is required (a non-empty string)"),
        ("steps[2].agent", "expected an agent id (an integer)"),
        ("steps[3].agent", "expected an agent id (an integer)"),
    ]


def test_it_checks_agent_ids_only_when_given():
    definition = with_steps({"id": "a", "type": "agent", "prompt": "hi", "agent": 99})
    assert errors(definition) == []
    assert errors(definition, agent_ids={1, 2}) == [("steps[0].agent", "unknown agent 99")]
    assert errors(definition, agent_ids={99}) == []


def test_it_rejects_an_unknown_tool():
    definition = with_steps({"id": "t", "type": "tool", "tool": "rm_rf", "arguments": {"x": 1}})
    assert errors(definition) == [("steps[0].tool", "unknown tool 'rm_rf'")]
    assert errors(with_steps({"id": "t", "type": "tool"})) == [
        ("steps[0].tool", "this field is required")
    ]


def test_it_rejects_an_unknown_argument_name():
    step = {"id": "t", "type": "tool", "tool": "calculator"}
    step["arguments"] = {"expression": "1 + 1", "precision": 2}
    assert errors(with_steps(step)) == [
        ("steps[0].arguments.precision", "unknown argument 'precision' for 'calculator'")
    ]


def test_it_rejects_a_missing_required_tool_argument():
    step = {"id": "t", "type": "tool", "tool": "calculator"}
    assert errors(with_steps(step)) == [
        ("steps[0].arguments", "missing required argument 'expression' for 'calculator'")
    ]
    step["arguments"] = {}
    assert errors(with_steps(step)) == [
        ("steps[0].arguments", "missing required argument 'expression' for 'calculator'")
    ]


def test_it_accepts_optional_and_literal_tool_arguments():
    assert errors(with_steps({"id": "t", "type": "tool", "tool": "current_time"})) == []
    step = {"id": "t", "type": "tool", "tool": "calculator", "arguments": {"expression": 5}}
    assert errors(with_steps(step)) == []


def test_it_rejects_arguments_that_are_not_an_object():
    step = {"id": "t", "type": "tool", "tool": "calculator", "arguments": ["1 + 1"]}
    assert errors(with_steps(step)) == [("steps[0].arguments", "arguments must be an object")]


# validate: templates


def test_it_rejects_a_reference_to_an_undeclared_input():
    assert errors(with_steps(agent("s", "{{ inputs.b }}"), inputs=[A])) == [
        ("steps[0].prompt", "unknown input 'b'")
    ]


def test_it_rejects_a_reference_to_an_unknown_step():
    assert errors(with_steps(agent("s", "{{ steps.nope.output }}"))) == [
        ("steps[0].prompt", "unknown step 'nope'")
    ]


def test_it_rejects_a_reference_to_a_later_step():
    definition = with_steps(agent("first", "{{ steps.later.output }}"), agent("later"))
    assert errors(definition) == [
        ("steps[0].prompt", "'steps.later.output' refers to a later step")
    ]


def test_it_rejects_a_reference_to_the_step_itself():
    assert errors(with_steps(agent("s", "{{ steps.s.output }}"))) == [
        ("steps[0].prompt", "'steps.s.output' refers to this step itself")
    ]


def test_it_checks_references_in_tool_arguments():
    step = {"id": "t", "type": "tool", "tool": "calculator"}
    step["arguments"] = {"expression": "{{ inputs.b }} + {{ steps.t.output }}"}
    assert errors(with_steps(step, inputs=[A])) == [
        ("steps[0].arguments.expression", "unknown input 'b'"),
        ("steps[0].arguments.expression", "'steps.t.output' refers to this step itself"),
    ]


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("{{ inputs.a.__class__ }}", "{{ inputs.a.__class__ }}"),
        ("x {{ steps.s.output.upper() }} y", "{{ steps.s.output.upper() }}"),
        ("{{ config }}", "{{ config }}"),
        ("{{ inputs.a | upper }}", "{{ inputs.a | upper }}"),
        ("{{ inputs['a'] }}", "{{ inputs['a'] }}"),
        ("{{ steps.s }}", "{{ steps.s }}"),
        ("{% if inputs.a %}yes{% endif %}", "{% if inputs.a %}"),
        ("value: {{ inputs.a", "{{ inputs.a"),
        ("{{ inputs.a }} and {{", "{{"),
        ("{{{ inputs.a }}}", "{{{ inputs.a }}"),
    ],
)
def test_it_rejects_a_malformed_template(template, shown):
    definition = with_steps(agent("s"), agent("t", template), inputs=[A])
    assert ("steps[1].prompt", f"malformed template: {shown}") in errors(definition)


def test_it_reports_each_malformed_part_of_a_template():
    definition = with_steps(agent("s", "{{ a }} {{ inputs.a }} {% b %}"), inputs=[A])
    assert errors(definition) == [
        ("steps[0].prompt", "malformed template: {{ a }}"),
        ("steps[0].prompt", "malformed template: {% b %}"),
    ]


# validate: conditions


def test_it_accepts_every_operator():
    when = {
        "and": [
            {"equals": ["{{ inputs.a }}", 1]},
            {"contains": [["x", "y"], "{{ inputs.a }}"]},
            {"or": [{"gt": [2, 1]}, {"gte": ["2", 1]}, {"lt": [1, 2.5]}, {"lte": [1, 1]}]},
            {"not": {"equals": [None, False]}},
        ]
    }
    assert errors(with_steps(condition("c", when), inputs=[A])) == []


def test_it_rejects_an_unknown_operator():
    [(path, message)] = errors(with_steps(condition("c", {"matches": ["a", "b"]})))
    assert path == "steps[0].when"
    assert message.startswith("unknown operator 'matches': expected one of equals, contains")


def test_it_rejects_an_expression_with_no_or_several_operators():
    expected = 'an expression is an object with one operator, like {"equals": [a, b]}'
    assert errors(with_steps(condition("c", {}))) == [("steps[0].when", expected)]
    both = {"equals": [1, 1], "gt": [2, 1]}
    assert errors(with_steps(condition("c", both))) == [("steps[0].when", expected)]
    assert errors(with_steps(condition("c", True))) == [("steps[0].when", expected)]
    assert errors(with_steps({"id": "c", "type": "condition"})) == [
        ("steps[0].when", "this field is required")
    ]


def test_it_rejects_the_wrong_arity():
    when = {
        "and": [
            {"equals": [1]},
            {"gt": [1, 2, 3]},
            {"contains": "ab"},
            {"or": []},
            {"not": [{"equals": [1, 1]}]},
            {"not": {"lt": 1}},
        ]
    }
    assert errors(with_steps(condition("c", when))) == [
        ("steps[0].when.and[0].equals", "equals takes a list of two operands"),
        ("steps[0].when.and[1].gt", "gt takes a list of two operands"),
        ("steps[0].when.and[2].contains", "contains takes a list of two operands"),
        ("steps[0].when.and[3].or", "or takes a list of one or more expressions"),
        ("steps[0].when.and[4].not", "not takes one expression, not a list"),
        ("steps[0].when.and[5].not.lt", "lt takes a list of two operands"),
    ]


def test_it_rejects_an_expression_nested_too_deeply():
    when = {"equals": [1, 1]}
    for _ in range(25):
        when = {"not": when}
    [(path, message)] = errors(with_steps(condition("c", when)))
    assert path == "steps[0].when" + ".not" * 20
    assert message == "the expression is nested too deeply (at most 20 levels)"


def test_it_reports_an_expression_with_two_operators_once():
    # not once more for each operator's operands, nor for an expression nested too deep in one
    deep = {"equals": [1, 1]}
    for _ in range(25):
        deep = {"not": deep}
    when = {"and": [{"equals": [1], "gt": "x"}, {"or": [], "not": deep}]}
    one = 'an expression is an object with one operator, like {"equals": [a, b]}'
    assert errors(with_steps(condition("c", when))) == [
        ("steps[0].when.and[0]", one),
        ("steps[0].when.and[1]", one),
    ]


def test_it_reports_the_other_errors_beside_an_expression_nested_too_deeply():
    when = {"equals": [1, 1]}
    for _ in range(300):  # jsonschema alone would exhaust the stack at 200 levels
        when = {"not": when}
    definition = with_steps(condition("c", {"and": [when, when]}), agent("s", "{{ inputs.b }}"))
    too_deep = "the expression is nested too deeply (at most 20 levels)"
    assert errors(definition) == [
        ("steps[0].when.and[0]" + ".not" * 19, too_deep),
        ("steps[0].when.and[1]" + ".not" * 19, too_deep),
        ("steps[1].prompt", "unknown input 'b'"),
    ]


def test_it_checks_operands():
    when = {
        "or": [
            {"gt": ["{{ steps.later.output }}", "ten"]},
            {"equals": [{"not": {"equals": [1, 1]}}, True]},
            {"lt": [True, 1]},
        ]
    }
    definition = with_steps(condition("c", when), agent("later"))
    assert errors(definition) == [
        ("steps[0].when.or[0].gt[0]", "'steps.later.output' refers to a later step"),
        ("steps[0].when.or[0].gt[1]", 'gt compares numbers, and "ten" is not a number'),
        (
            "steps[0].when.or[1].equals[0]",
            "an operand is a string, number, boolean, null or list, not an object",
        ),
        ("steps[0].when.or[2].lt[0]", "lt compares numbers, and true is not a number"),
    ]


def test_it_reports_the_path_of_an_operand():
    when = {"gt": ["{{ inputs.b }}", 10]}
    assert errors(with_steps(condition("c", when))) == [
        ("steps[0].when.gt[0]", "unknown input 'b'")
    ]


def test_it_rejects_guards_naming_an_earlier_unknown_or_own_step():
    guards = ["first", "nope", "c", "last", 7]
    definition = with_steps(agent("first"), condition("c", {"equals": [1, 1]}, guards=guards))
    definition["steps"].append(agent("last"))
    assert errors(definition) == [
        ("steps[1].guards[0]", "'first' is not a later step"),
        ("steps[1].guards[1]", "unknown step 'nope'"),
        ("steps[1].guards[2]", "'c' is not a later step"),
        ("steps[1].guards[4]", "unknown step 7"),
    ]


def test_it_rejects_guards_that_are_not_a_list():
    definition = with_steps(condition("c", {"equals": [1, 1]}, guards="last"), agent("last"))
    assert errors(definition) == [("steps[0].guards", "guards must be a list of step ids")]


# check_inputs


def test_it_fills_in_defaults():
    values, problems = check_inputs(EXAMPLE, {"a": 2})
    assert problems == []
    assert values == {"a": 2, "topic": "numbers", "verbose": False, "extra": None}


def test_it_keeps_given_values():
    given = {"a": 2.5, "topic": "cats", "verbose": True, "extra": {"k": [1, None]}}
    assert check_inputs(EXAMPLE, given) == (given, [])
    assert check_inputs(EXAMPLE, {"a": 1, "extra": None}) == (
        {"a": 1, "topic": "numbers", "verbose": False, "extra": None},
        [],
    )


def test_it_does_not_share_a_default_between_runs():
    definition = with_steps(agent("s"), inputs=[{"name": "l", "type": "json", "default": [1]}])
    values, _ = check_inputs(definition, {})
    values["l"].append(2)
    assert check_inputs(definition, {})[0] == {"l": [1]}


def test_it_requires_required_inputs():
    assert check_inputs(EXAMPLE, {})[1] == [
        {"path": "inputs.a", "message": "this input is required"}
    ]
    assert check_inputs(EXAMPLE, {"a": None})[1] == [
        {"path": "inputs.a", "message": "this input is required"}
    ]
    assert check_inputs(EXAMPLE, None)[1] == [
        {"path": "inputs.a", "message": "this input is required"}
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("a", True, "expected a number"),
        ("a", "3", "expected a number"),
        ("a", [3], "expected a number"),
        ("topic", 3, "expected a string"),
        ("verbose", "true", "expected true or false"),
        ("verbose", 1, "expected true or false"),
    ],
)
def test_it_rejects_inputs_of_the_wrong_type(name, value, message):
    given = {"a": 1, name: value}
    values, problems = check_inputs(EXAMPLE, given)
    assert problems == [{"path": f"inputs.{name}", "message": message}]
    assert name not in values


def test_it_rejects_unknown_inputs():
    _, problems = check_inputs(EXAMPLE, {"a": 1, "b": 2})
    assert problems == [{"path": "inputs.b", "message": "unknown input 'b'"}]


def test_it_rejects_inputs_that_are_not_an_object():
    assert check_inputs(EXAMPLE, [1, 2]) == (
        {},
        [{"path": "inputs", "message": "expected an object of input values"}],
    )


def test_it_reports_several_input_errors_at_once():
    _, problems = check_inputs(EXAMPLE, {"topic": False, "zzz": 1})
    assert sorted(p["path"] for p in problems) == ["inputs.a", "inputs.topic", "inputs.zzz"]


def test_it_bounds_each_input_and_all_of_them_by_the_message_limit(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 100
    definition = with_steps(agent("s"), inputs=[
        {"name": "x", "type": "string"}, {"name": "y", "type": "json"}
    ])  # fmt: skip
    assert check_inputs(definition, {"x": "a" * 50, "y": ["b" * 30]})[1] == []
    assert check_inputs(definition, {"x": "é" * 51})[1] == [
        {"path": "inputs.x", "message": "this input is 102 bytes, more than the limit of 100"}
    ]
    assert check_inputs(definition, {"x": "a" * 60, "y": ["b" * 40]})[1] == [
        {
            "path": "inputs",
            "message": "the inputs are 117 bytes as JSON, more than the limit of 100",
        }
    ]


def test_it_refuses_inputs_that_would_render_a_prompt_or_arguments_over_the_limit(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 100
    definition = with_steps(
        {"id": "t", "type": "tool", "tool": "calculator",
         "arguments": {"expression": "{{ inputs.x }}{{ inputs.x }}"}},
        agent("a", "{{ steps.t.output }}" + "{{ inputs.x }}" * 3),
        inputs=[{"name": "x", "type": "string"}],
    )  # fmt: skip
    assert check_inputs(definition, {"x": "a" * 30})[1] == []
    assert check_inputs(definition, {"x": "a" * 40})[1] == [
        {"path": "steps[1].prompt", "message": "with these inputs, the rendered text would be"
         " more than 100 bytes, the most a message may have"},
    ]  # fmt: skip
    assert [e["path"] for e in check_inputs(definition, {"x": "a" * 60})[1]] == [
        "steps[0].arguments",
        "steps[1].prompt",
    ]


# render


CONTEXT = {
    "inputs": {
        "s": "text",
        "i": 3,
        "f": 2.5,
        "yes": True,
        "no": False,
        "none": None,
        "j": {"k": [1, "é"]},
    },
    "steps": {"sum": "11", "data": [1, {"a": None}], "flag": True},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.s }}", "text"),
        ("{{ inputs.i }} + 1", "3 + 1"),
        ("{{ inputs.f }}", "2.5"),
        ("{{ inputs.yes }}/{{ inputs.no }}", "true/false"),
        ("[{{ inputs.none }}]", "[]"),
        ("{{ inputs.j }}", '{"k":[1,"é"]}'),
        ("{{steps.sum.output}}!", "11!"),
        ("{{ steps.data.output }}", '[1,{"a":null}]'),
        ("{{ steps.flag.output }}", "true"),
        ("[{{ steps.skipped.output }}]", "[]"),
        ("no braces } here {", "no braces } here {"),
    ],
)
def test_it_renders_every_kind_of_value(template, expected):
    assert render(template, CONTEXT) == expected


def test_it_refuses_to_render_a_malformed_template():
    with pytest.raises(ValueError, match=r"malformed template: \{\{ inputs.s.__class__ \}\}"):
        render("{{ inputs.s.__class__ }}", CONTEXT)


def test_it_renders_string_arguments_and_keeps_the_others():
    arguments = {"expression": "{{ inputs.i }} * 2", "n": 3, "l": ["{{ inputs.i }}"], "b": None}
    original = copy.deepcopy(arguments)
    assert render_arguments(arguments, CONTEXT) == {
        "expression": "3 * 2",
        "n": 3,
        "l": ["{{ inputs.i }}"],
        "b": None,
    }
    assert arguments == original
    assert render_arguments(None, CONTEXT) == {}


def test_it_renders_up_to_the_message_limit_in_bytes(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 10
    assert render("{{ inputs.s }}é{{ inputs.s }}", {"inputs": {"s": "abcd"}}) == "abcdéabcd"
    with pytest.raises(TooLong, match="more than 10 bytes"):
        render("{{ inputs.s }}éé{{ inputs.s }}", {"inputs": {"s": "abcd"}})
    with pytest.raises(TooLong):
        render("{{ steps.x.output }}", {"steps": {"x": "a" * 11}})


def test_it_stops_rendering_as_soon_as_the_limit_is_passed():
    # The attack of issue 11: one input referenced 2,000 times. Built whole, this is 64 MB.
    template = "{{ inputs.s }}" * 2000
    tracemalloc.start()
    try:
        with pytest.raises(TooLong):
            render(template, {"inputs": {"s": "x" * 32_000}})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_it_bounds_a_steps_arguments_together(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 10
    context = {"inputs": {"s": "abcd"}}
    assert render_arguments({"a": "{{ inputs.s }}", "b": "{{ inputs.s }}"}, context)
    with pytest.raises(TooLong, match=r"arguments.*more than 10 bytes"):
        render_arguments({"a": "{{ inputs.s }}", "b": "{{ inputs.s }}", "c": "xyz"}, context)


def test_it_bounds_what_a_condition_renders(settings):
    settings.RUN_MESSAGE_MAX_BYTES = 10
    with pytest.raises(ConditionError, match="more than 10 bytes"):
        evaluate(
            {"contains": ["{{ inputs.s }}{{ inputs.s }}{{ inputs.s }}", "x"]},
            CONTEXT | {"inputs": {"s": "abcd"}},
        )


# evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"equals": ["{{ inputs.s }}", "text"]}, True),
        ({"equals": ["{{ inputs.i }}", 3]}, True),
        ({"equals": ["{{ steps.sum.output }}", 11]}, True),
        ({"equals": ["{{ inputs.yes }}", True]}, True),
        ({"equals": ["{{ inputs.yes }}", 1]}, False),
        ({"equals": ["{{ inputs.none }}", None]}, True),
        ({"equals": ["{{ inputs.j }}", "x"]}, False),
        ({"equals": ["{{ inputs.s }}-{{ inputs.i }}", "text-3"]}, True),
        ({"contains": ["{{ inputs.s }}", "ex"]}, True),
        ({"contains": ["{{ inputs.s }}", "z"]}, False),
        ({"contains": ["{{ steps.data.output }}", 1]}, True),
        ({"contains": [["a", "b"], "b"]}, True),
        ({"contains": [[1, 2], True]}, False),
        ({"contains": ["version 11", "{{ steps.sum.output }}"]}, True),
        ({"gt": ["{{ steps.sum.output }}", 10]}, True),
        ({"gt": ["{{ steps.sum.output }}", 11]}, False),
        ({"gte": ["{{ steps.sum.output }}", 11]}, True),
        ({"lt": ["{{ inputs.f }}", "3"]}, True),
        ({"lt": [3, 2.5]}, False),
        ({"lte": ["{{ inputs.i }}", 3]}, True),
        ({"lte": [" 4 ", 3]}, False),
    ],
)
def test_it_evaluates_each_operator(expression, expected):
    assert evaluate(expression, CONTEXT) is expected


def test_it_evaluates_nested_and_or_not():
    yes, no = {"equals": [1, 1]}, {"equals": [1, 2]}
    assert evaluate({"and": [yes, yes]}, CONTEXT) is True
    assert evaluate({"and": [yes, no]}, CONTEXT) is False
    assert evaluate({"or": [no, yes]}, CONTEXT) is True
    assert evaluate({"or": [no, no]}, CONTEXT) is False
    assert evaluate({"not": no}, CONTEXT) is True
    nested = {"or": [{"and": [yes, {"not": yes}]}, {"not": {"or": [no, {"and": [no]}]}}]}
    assert evaluate(nested, CONTEXT) is True


def test_it_stops_at_the_first_answer():
    bad = {"gt": ["abc", 1]}
    assert evaluate({"and": [{"equals": [1, 2]}, bad]}, CONTEXT) is False
    assert evaluate({"or": [{"equals": [1, 1]}, bad]}, CONTEXT) is True


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"gt": ["{{ inputs.s }}", 10]}, 'gt compares numbers, and "text" is not a number'),
        ({"lte": [1, "{{ inputs.none }}"]}, "lte compares numbers, and null is not a number"),
        ({"gte": ["{{ inputs.yes }}", 0]}, "gte compares numbers, and true is not a number"),
        ({"lt": ["{{ steps.data.output }}", 0]}, 'lt compares numbers, and [1,{"a":null}]'),
        ({"gt": ["nan", 0]}, 'gt compares numbers, and "nan" is not a number'),
        ({"contains": [3, 3]}, "contains looks in a string or a list, not in 3"),
        ({"matches": [1, 1]}, "unknown operator 'matches'"),
        ({"equals": [1]}, "equals takes a list of two operands"),
        ({"equals": ["{{ inputs.s.upper() }}", 1]}, "malformed template"),
    ],
)
def test_it_raises_a_condition_error_when_a_condition_cannot_be_decided(expression, message):
    with pytest.raises(ConditionError) as raised:
        evaluate(expression, CONTEXT)
    assert str(raised.value).startswith(message)


# guarded_steps


def test_it_guards_all_later_steps_by_default():
    definition = with_steps(agent("a"), condition("c", {"equals": [1, 1]}), agent("b"), agent("d"))
    assert guarded_steps(definition, 1) == ["b", "d"]
    definition["steps"].append(condition("last", {"equals": [1, 1]}))
    assert guarded_steps(definition, 4) == []


def test_it_guards_the_steps_named():
    assert guarded_steps(EXAMPLE, 1) == ["explain"]
    definition = with_steps(condition("c", {"equals": [1, 1]}, guards=[]), agent("b"))
    assert guarded_steps(definition, 0) == []
