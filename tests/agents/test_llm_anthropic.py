"""AnthropicModel against a real HTTP server (FakeAnthropic): the conversion of OpenAI-format
messages and tools, streaming, tool calls, usage, errors, stop."""

import json
import threading
import time

import pytest

from agents.llm import make_model
from agents.llm.anthropic import AnthropicModel, anthropic_messages
from agents.llm.base import ModelError, StopSignal, TextDelta, ToolCall, Usage
from tests.fakeanthropic import (
    FakeAnthropic,
    error_event,
    message,
    text_block,
    tool_use_block,
)
from tests.fakellm import MALFORMED, unanswered_port

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def fake():
    with FakeAnthropic() as server:
        yield server


def model_for(fake, api_key="sk-ant-test", timeout=30, **options):
    return AnthropicModel(
        base_url=fake.base_url, api_key=api_key, model="claude-tiny", timeout=timeout, **options
    )


def run(model, tools=(), stop=None, messages=MESSAGES):
    return list(model.stream(messages, list(tools), stop or StopSignal()))


def test_it_streams_text_and_reports_usage(fake):
    fake.reply(text_block(0, "Hel", "lo, ", "world"), input_tokens=12, output_tokens=3)

    assert run(model_for(fake)) == [
        TextDelta("Hel"),
        TextDelta("lo, "),
        TextDelta("world"),
        Usage(12, 3),
    ]


def test_it_assembles_tool_calls_from_input_json_deltas(fake):
    paris = json.dumps({"city": "Paris"})
    fake.reply(
        text_block(0, "Let me look."),
        tool_use_block(1, "toolu_1", "get_weather", paris),
        tool_use_block(2, "toolu_2", "get_weather", ""),
    )

    assert run(model_for(fake), tools=[WEATHER_TOOL]) == [
        TextDelta("Let me look."),
        ToolCall("toolu_1", "get_weather", paris),
        ToolCall("toolu_2", "get_weather", "{}"),
        Usage(10, 5),
    ]


def test_it_sends_the_system_turns_tools_and_limits(fake):
    fake.reply(text_block(0, "Hi"))

    run(model_for(fake, temperature=0.2), tools=[WEATHER_TOOL])

    [request] = fake.requests
    assert request.path == "/v1/messages"
    assert request.body == {
        "model": "claude-tiny",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4096,
        "temperature": 0.2,
        "stream": True,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            }
        ],
    }
    assert "sk-ant-test" in str(dict(request.headers))


def test_it_sends_no_key_when_it_has_none(fake):
    fake.reply(text_block(0, "Hi"))

    run(model_for(fake, api_key="", max_tokens=100))

    [request] = fake.requests
    assert request.headers.get("Authorization") is None
    assert request.headers.get("X-Api-Key") is None
    assert request.body["max_tokens"] == 100
    assert "temperature" not in request.body


def test_it_converts_tool_calls_and_results_to_blocks():
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{not json"}},
    ]
    system, turns = anthropic_messages(
        [
            {"role": "system", "content": "One."},
            {"role": "system", "content": "Two."},
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": "Calling.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {"role": "tool", "tool_call_id": "c2", "content": "2"},
            {"role": "assistant", "content": ""},  # an empty turn: the API refuses those
            {"role": "user", "content": "Thanks"},
        ]
    )

    assert system == "One.\n\nTwo."
    assert turns == [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}},
                {"type": "tool_use", "id": "c2", "name": "g", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "1"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "2"},
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]


def test_it_raises_model_error_with_the_status_and_message_of_an_error_body(fake):
    fake.fail(400, "max_tokens: too large", error_type="invalid_request_error")

    with pytest.raises(ModelError, match=r"answered 400: max_tokens: too large"):
        run(model_for(fake))


def test_it_raises_model_error_on_an_error_event_mid_stream(fake):
    events = message(text_block(0, "Hel"))
    fake.script([*events[:4], error_event("overloaded_error", "Overloaded")])

    items = []
    with pytest.raises(ModelError, match="the model failed: Overloaded"):
        items.extend(model_for(fake).stream(MESSAGES, [], StopSignal()))
    assert items == [TextDelta("Hel")]


def test_it_skips_a_malformed_event(fake, caplog):
    events = message(text_block(0, "before ", "after"))
    fake.script([*events[:4], MALFORMED, *events[4:]])

    assert run(model_for(fake)) == [TextDelta("before "), TextDelta("after"), Usage(10, 5)]
    assert "malformed chunk" in caplog.text


def test_it_returns_quietly_when_stopped_during_a_blocking_read(fake):
    events = message(text_block(0, "Hel"), tool_use_block(1, "t1", "get_weather", '{"ci'))
    fake.script(events[:-3], hang=True)  # the first text, then the server holds the line
    stop = StopSignal()
    stopped_at = []

    def stop_soon():
        time.sleep(0.1)
        stopped_at.append(time.monotonic())
        stop.set()

    items = []
    for item in model_for(fake).stream(MESSAGES, [WEATHER_TOOL], stop):
        items.append(item)
        threading.Thread(target=stop_soon, daemon=True).start()

    assert time.monotonic() - stopped_at[0] < 1
    assert items == [TextDelta("Hel")]  # and no half-received tool call


def test_it_returns_quietly_when_stopped_before_the_first_byte(fake):
    fake.script(silent=True)
    stop = StopSignal()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()

    assert run(model_for(fake), stop=stop) == []
    assert time.monotonic() - started < 1.2


def test_it_returns_quietly_when_stopped_while_connecting():
    with unanswered_port() as port:
        model = AnthropicModel(
            base_url=f"http://127.0.0.1:{port}", api_key="", model="claude", timeout=30
        )
        stop = StopSignal()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()

        assert run(model, stop=stop) == []
        assert time.monotonic() - started < 1.2


def test_make_model_builds_a_client_of_each_kind(fake, settings):
    fake.reply(text_block(0, "Hi"))
    model = make_model("anthropic", base_url=fake.base_url, api_key="", model="claude-tiny")

    assert isinstance(model, AnthropicModel)
    assert model.timeout == settings.LLM_TIMEOUT
    assert run(model) == [TextDelta("Hi"), Usage(10, 5)]
    with pytest.raises(ValueError, match="one of openai, anthropic, not 'gemini'"):
        make_model("gemini", base_url=fake.base_url, api_key="", model="g")
