"""OpenAIChatModel (the openai SDK over agents.llm.transport) against a real HTTP server
(FakeLLM): streaming, tool calls, faults, stop."""

import json
import logging
import socket
import threading
import time

import pytest

from agents.llm.base import ModelError, StopSignal, TextDelta, ToolCall, Usage
from agents.llm.openai import OpenAIChatModel
from tests.fakellm import (
    MALFORMED,
    FakeLLM,
    error_chunk,
    text,
    tool_call,
    unanswered_port,
    usage,
)

MESSAGES = [{"role": "user", "content": "Hello"}]
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
    with FakeLLM() as server:
        yield server


def model_for(fake, api_key="sk-test", timeout=30):
    return OpenAIChatModel(base_url=fake.base_url, api_key=api_key, model="tiny", timeout=timeout)


def run(model, tools=(), stop=None):
    return list(model.stream(MESSAGES, list(tools), stop or StopSignal()))


def test_it_streams_text_deltas_in_order(fake):
    fake.script([text("Hel"), text("lo, "), text(""), text("world")], delay=0.01)

    assert run(model_for(fake)) == [TextDelta("Hel"), TextDelta("lo, "), TextDelta("world")]


def test_it_assembles_a_tool_call_split_over_chunks(fake):
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    fake.script([text("Let me look."), *tool_call(0, "call_abc", "get_weather", arguments)])

    items = run(model_for(fake), tools=[WEATHER_TOOL])

    assert items == [TextDelta("Let me look."), ToolCall("call_abc", "get_weather", arguments)]


def test_it_assembles_two_parallel_tool_calls_by_index(fake):
    paris, tokyo = (
        tool_call(0, "c1", "get_weather", '{"city": "Paris"}'),
        tool_call(1, "", "get_weather", '{"city": "Tokyo"}'),
    )
    # Interleave the two calls' deltas, as servers do for parallel calls; the second has no id.
    interleaved = [chunk for pair in zip(tokyo, paris, strict=False) for chunk in pair]
    fake.script(interleaved + tokyo[len(paris) :] + paris[len(tokyo) :])

    assert run(model_for(fake), tools=[WEATHER_TOOL]) == [
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_1", "get_weather", '{"city": "Tokyo"}'),
    ]


def test_it_assembles_tool_calls_whose_deltas_have_no_index(fake):
    def delta(**call):
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}

    fake.script(
        [
            delta(id="c1", function={"name": "get_weather", "arguments": '{"city": '}),
            delta(function={"arguments": '"Paris"}'}),
            delta(id="c2", function={"name": "get_weather", "arguments": "{}"}),
        ]
    )

    assert run(model_for(fake), tools=[WEATHER_TOOL]) == [
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("c2", "get_weather", "{}"),
    ]


def test_it_defaults_empty_tool_arguments_to_an_empty_object(fake):
    fake.script(tool_call(0, "c1", "list_files", ""))

    assert run(model_for(fake), tools=[WEATHER_TOOL]) == [ToolCall("c1", "list_files", "{}")]


def test_it_reports_usage(fake):
    fake.script([text("Hi"), usage(12, 3)])

    assert run(model_for(fake)) == [TextDelta("Hi"), Usage(12, 3)]


def test_it_sends_the_model_messages_tools_stream_options_and_key(fake):
    fake.script([text("Hi")])

    run(model_for(fake, api_key="sk-secret"), tools=[WEATHER_TOOL])

    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "tiny",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_TOOL],
    }
    assert request.headers.get("Authorization") == "Bearer sk-secret"


def test_it_sends_its_headers_and_the_sampling_options_it_has(fake):
    fake.script([text("Hi")])
    model = OpenAIChatModel(
        base_url=fake.base_url,
        api_key="sk-test",
        model="tiny",
        timeout=30,
        headers={"HTTP-Referer": "https://relay.example"},
        temperature=0.5,
        max_tokens=64,
    )

    run(model)

    [request] = fake.requests
    assert request.headers.get("HTTP-Referer") == "https://relay.example"
    assert (request.body["temperature"], request.body["max_tokens"]) == (0.5, 64)


def test_it_sends_no_sampling_options_it_was_not_given(fake):
    fake.script([text("Hi")])

    run(model_for(fake))

    [request] = fake.requests
    assert "temperature" not in request.body
    assert "max_tokens" not in request.body


def test_it_sends_no_authorization_or_tools_when_there_are_none(fake):
    fake.script([text("Hi")])

    run(model_for(fake, api_key=""))

    [request] = fake.requests
    assert request.headers.get("Authorization") is None
    assert "tools" not in request.body


def test_it_skips_a_malformed_chunk_and_keeps_streaming(fake, caplog):
    fake.script([text("before "), MALFORMED, text("after")])

    assert run(model_for(fake)) == [TextDelta("before "), TextDelta("after")]
    assert "malformed chunk" in caplog.text


def test_it_raises_model_error_with_status_and_message_on_http_500(fake, caplog):
    caplog.set_level(logging.DEBUG)  # the SDK's own logs too: none may show the key
    fake.fail(500, "the model is overloaded")

    with pytest.raises(ModelError, match=r"answered 500: the model is overloaded") as failure:
        run(model_for(fake, api_key="sk-secret"))
    assert "sk-secret" not in str(failure.value) + caplog.text


def test_a_key_the_server_quotes_back_is_not_in_the_error_nor_the_retry(fake, settings):
    settings.LLM_MAX_RETRIES = 1
    fake.fail(503, "busy: your key sk-quoted-back is rate limited", headers={"Retry-After": "0"})
    fake.fail(401, "Incorrect API key provided: sk-quoted-back")

    items = []
    with pytest.raises(ModelError) as failure:
        items.extend(model_for(fake, api_key="sk-quoted-back").stream(MESSAGES, [], StopSignal()))
    assert "sk-quoted-back" not in str(failure.value) + repr(items)
    assert "Incorrect API key provided: [the API key]" in str(failure.value)


def test_it_raises_model_error_on_an_error_chunk_mid_stream(fake):
    fake.script([text("Hel"), error_chunk("context length exceeded")])

    items = []
    with pytest.raises(ModelError, match="context length exceeded"):
        items.extend(model_for(fake).stream(MESSAGES, [], StopSignal()))
    assert items == [TextDelta("Hel")]


def test_it_raises_model_error_when_the_connection_is_refused():
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAIChatModel(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="", model="tiny", timeout=5
    )

    with pytest.raises(ModelError, match=rf"cannot reach the model at http://127.0.0.1:{port}/v1"):
        run(model)


def test_it_raises_model_error_when_the_model_goes_silent(fake):
    fake.script([text("Hel")], hang=True)

    with pytest.raises(ModelError, match=r"sent nothing for 0\.3 seconds"):
        run(model_for(fake, timeout=0.3))


def test_it_returns_quietly_when_stopped_during_a_blocking_read(fake):
    # The server sends one chunk then hangs, so the model blocks in a read that only the
    # stop's socket shutdown can end (the read timeout is 30 seconds).
    fake.script([text("Hel"), *tool_call(0, "c1", "get_weather", '{"ci')], hang=True)
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


def stopped_within_a_second(model, delay=0.2):
    """Stop `model`'s stream `delay` seconds in; the seconds from the stop to its end."""
    stop = StopSignal()
    stopped_at = []

    def stop_soon():
        time.sleep(delay)
        stopped_at.append(time.monotonic())
        stop.set()

    threading.Thread(target=stop_soon, daemon=True).start()
    assert list(model.stream(MESSAGES, [], stop)) == []
    return time.monotonic() - stopped_at[0]


def test_it_returns_quietly_when_stopped_before_the_first_byte(fake):
    fake.script(silent=True)  # the request is read, and nothing comes back

    assert stopped_within_a_second(model_for(fake)) < 1


def test_it_returns_quietly_when_stopped_while_connecting():
    # the connect would wait for its timeout (10 s) unless the stop cuts it short
    with unanswered_port() as port:
        model = OpenAIChatModel(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="", model="tiny", timeout=30
        )

        assert stopped_within_a_second(model) < 1
