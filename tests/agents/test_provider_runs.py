"""Runs on an agent's provider, executed in this process (the test is the worker), against the
local fake endpoints: what reaches the provider (its key, headers, the agent's settings), the
Anthropic kind with a tool call, and the address rules at connect time."""

import json

import pytest

from agents import services
from agents.models import Provider
from runs import loop
from runs.models import Run

from conftest import logged, new_thread
from fakeanthropic import FakeAnthropic, text_block, tool_use_block
from fakellm import FakeLLM, text, usage
from sse import Event, text_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_queue")]

KEY = "sk-provider-0123456789"


@pytest.fixture
def private_ok(settings):
    settings.PROVIDERS_ALLOW_PRIVATE = True  # the fakes listen on 127.0.0.1


def run_on(user, provider, message="Hi", **agent_fields):
    thread = new_thread(user, provider=provider, **agent_fields)
    run = services.agent_start(user=user, thread=thread, message=message)
    loop.execute(run.pk)
    run.refresh_from_db()
    return run, thread


def transcript(run):
    return [Event(str(i), kind, json.dumps(data)) for i, kind, data in logged(run)]


def test_an_openai_kind_provider_gets_its_key_headers_and_the_agents_settings(alice, private_ok):
    with FakeLLM() as fake:
        provider = Provider(owner=alice, name="P", kind="openai", base_url=fake.base_url,
                            default_model="tiny-1")  # fmt: skip
        provider.api_key, provider.headers = KEY, {"X-Team": "t-1"}
        provider.save()
        fake.script([text("Hello"), text(" there"), usage(3, 2)])
        run, _ = run_on(alice, provider, model="", temperature=0.3, max_tokens=64)
    assert run.status == Run.Status.COMPLETED, run.error
    [request] = fake.requests
    assert request.headers.get("Authorization") == f"Bearer {KEY}"
    assert request.headers.get("X-Team") == "t-1"
    assert (request.body["model"], request.body["temperature"], request.body["max_tokens"]) == (
        "tiny-1", 0.3, 64,
    )  # fmt: skip
    assert text_of(transcript(run)) == "Hello there"
    assert (run.input_tokens, run.output_tokens) == (3, 2)
    assert KEY not in json.dumps([data for _, _, data in logged(run)])


def test_an_anthropic_provider_streams_a_tool_call_and_the_answer(alice, private_ok):
    with FakeAnthropic() as fake:
        provider = Provider(owner=alice, name="A", kind="anthropic", base_url=fake.base_url,
                            default_model="claude-test")  # fmt: skip
        provider.api_key = KEY
        provider.save()
        fake.reply(tool_use_block(0, "toolu_1", "calculator", '{"expression": "6*7"}'))
        fake.reply(text_block(0, "It is ", "42."))
        run, thread = run_on(alice, provider, message="What is 6*7?", model="",
                             tools=["calculator"])  # fmt: skip
    assert run.status == Run.Status.COMPLETED, run.error
    done = next(data for _, kind, data in logged(run) if kind == "tool.done")
    assert (done["name"], done["output"]) == ("calculator", "42")
    assert thread.messages.filter(role="assistant").last().content == "It is 42."
    first, second = fake.requests
    assert first.headers.get("x-api-key") == KEY or first.headers.get("Authorization") == (
        f"Bearer {KEY}"
    )
    assert first.body["tools"][0]["name"] == "calculator"
    # the second turn carries the call and its result in the Messages API's own shapes
    assert second.body["messages"][-2]["content"][0]["type"] == "tool_use"
    assert second.body["messages"][-1]["content"][0] == {
        "type": "tool_result", "tool_use_id": "toolu_1", "content": "42",
    }  # fmt: skip


def test_a_provider_at_a_private_address_is_refused_at_connect_time(alice, settings):
    with FakeLLM() as fake:
        # saved when it was allowed, or through a name that resolves anew: the worker checks
        provider = Provider.objects.create(owner=alice, name="P", base_url=fake.base_url)
        settings.LLM_MAX_RETRIES = 3
        run, _ = run_on(alice, provider, model="tiny")
    assert run.status == Run.Status.FAILED
    assert "not a public address" in run.error and "PROVIDERS_ALLOW_PRIVATE" in run.error
    assert fake.requests == []
    assert not any(kind == "model.retry" for _, kind, _ in logged(run))  # it will not change


def test_the_default_provider_is_the_environments_and_may_be_private(alice, settings):
    with FakeLLM() as fake:
        settings.LLM_BASE_URL, settings.LLM_API_KEY = fake.base_url, "sk-env"
        fake.script([text("From the environment")])
        run, _ = run_on(alice, None, model="env-model")
    assert run.status == Run.Status.COMPLETED, run.error
    assert fake.requests[0].headers.get("Authorization") == "Bearer sk-env"
    assert fake.requests[0].body["model"] == "env-model"
