"""Retries of model calls that fail before any output, against the fake servers: which failures
are retried, how long each wait is, and that a stop, the run's deadline and LLM_MAX_RETRIES
bound them; and the model.retry event a run announces."""

import datetime
import socket
import threading
import time

import pytest
from django.utils import timezone

from agents import services
from agents.llm import Retrying, retry
from agents.llm.anthropic import AnthropicModel
from agents.llm.base import ModelError, StopSignal, TextDelta, Usage
from agents.llm.openai import OpenAIChatModel
from runs import loop
from runs.models import Run
from tests.fakeanthropic import FakeAnthropic, error_event, text_block
from tests.fakellm import FakeLLM, text, usage

from conftest import logged, new_thread

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(autouse=True)
def quick(settings, monkeypatch):
    settings.LLM_MAX_RETRIES = 3
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.05)


@pytest.fixture
def fake():
    with FakeLLM() as server:
        yield server


def model_for(fake, timeout=30):
    return OpenAIChatModel(base_url=fake.base_url, api_key="sk-test", model="tiny", timeout=timeout)


def run(model, stop=None, deadline=None):
    return list(model.stream(MESSAGES, [], stop or StopSignal(), deadline=deadline))


def test_it_waits_as_long_as_retry_after_says(fake):
    fake.fail(429, "rate limited", headers={"Retry-After": "2"})
    fake.script([text("Hi")])

    assert run(model_for(fake)) == [
        Retrying(1, 2.0, "the model server answered 429: rate limited"),
        TextDelta("Hi"),
    ]
    first, second = fake.requests
    assert 1.9 < second.at - first.at < 2.5


def test_it_retries_a_500_and_then_streams_the_answer(fake):
    fake.fail(500, "try again")
    fake.script([text("Hi"), usage(3, 1)])

    [retrying, *rest] = run(model_for(fake))

    assert (retrying.attempt, retrying.reason) == (1, "the model server answered 500: try again")
    assert 0 <= retrying.delay <= 0.1  # full jitter under the base
    assert rest == [TextDelta("Hi"), Usage(3, 1)]


def test_it_gives_up_after_llm_max_retries(fake, settings):
    settings.LLM_MAX_RETRIES = 2
    for _ in range(3):
        fake.fail(503, "down", headers={"retry-after-ms": "10"})
    items = []

    with pytest.raises(ModelError, match="answered 503: down"):
        items.extend(model_for(fake).stream(MESSAGES, [], StopSignal()))
    assert items == [
        Retrying(1, 0.0, "the model server answered 503: down"),
        Retrying(2, 0.0, "the model server answered 503: down"),
    ]
    assert len(fake.requests) == 3


def test_it_ends_quietly_when_stopped_during_a_wait(fake):
    fake.fail(429, "rate limited", headers={"Retry-After": "5"})
    stop = StopSignal()
    items, stopped_at = [], []

    def stop_now():
        stopped_at.append(time.monotonic())
        stop.set()

    for item in model_for(fake).stream(MESSAGES, [], stop):
        items.append(item)
        threading.Timer(0.1, stop_now).start()

    assert time.monotonic() - stopped_at[0] < 0.2
    assert items == [Retrying(1, 5.0, "the model server answered 429: rate limited")]
    assert len(fake.requests) == 1


def test_it_fails_at_once_rather_than_wait_past_the_deadline(fake):
    fake.fail(429, "rate limited", headers={"Retry-After": "5"})
    started = time.monotonic()

    with pytest.raises(ModelError, match="answered 429: rate limited"):
        run(model_for(fake), deadline=started + 2)
    assert time.monotonic() - started < 1


def test_it_does_not_retry_a_failure_after_output(fake):
    fake.script([text("Hel")], drop=True)
    items = []

    with pytest.raises(ModelError, match="the connection to the model broke"):
        items.extend(model_for(fake).stream(MESSAGES, [], StopSignal()))
    assert items == [TextDelta("Hel")]
    assert len(fake.requests) == 1


def test_it_retries_a_connection_dropped_before_any_output(fake):
    fake.script([], drop=True)
    fake.script([text("Hi")])

    [retrying, rest] = run(model_for(fake))

    assert retrying.reason.startswith("the connection to the model broke")
    assert rest == TextDelta("Hi")


@pytest.mark.parametrize("status", [400, 401, 404])
def test_it_does_not_retry_a_client_error(fake, status):
    fake.fail(status, "bad request")

    with pytest.raises(ModelError, match=f"answered {status}: bad request"):
        run(model_for(fake))
    assert len(fake.requests) == 1


def test_it_retries_when_the_model_cannot_be_reached(settings):
    settings.LLM_MAX_RETRIES = 1
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    model = OpenAIChatModel(base_url=url, api_key="sk-secret", model="tiny", timeout=5)
    items = []

    with pytest.raises(ModelError, match=f"cannot reach the model at {url}") as failure:
        items.extend(model.stream(MESSAGES, [], StopSignal()))
    [retrying] = items
    assert retrying.reason == f"cannot reach the model at {url}: connection refused"
    assert "sk-secret" not in str(failure.value)


def test_it_retries_anthropic_overloaded_answers_and_events():
    with FakeAnthropic() as fake:
        fake.fail(529, "Overloaded")
        fake.script([error_event("overloaded_error", "Overloaded")])
        fake.reply(text_block(0, "Hi"))
        model = AnthropicModel(base_url=fake.base_url, api_key="k", model="claude", timeout=5)

        items = run(model)

    assert [(i.attempt, i.reason) for i in items[:2]] == [
        (1, "the model server answered 529: Overloaded"),
        (2, "the model failed: Overloaded"),
    ]
    assert items[2:] == [TextDelta("Hi"), Usage(10, 5)]


def test_it_reads_retry_after_as_seconds_a_date_or_milliseconds():
    in_a_minute = timezone.now() + datetime.timedelta(seconds=60)
    date = in_a_minute.strftime("%a, %d %b %Y %H:%M:%S GMT")

    assert retry.retry_after({"retry-after": "3"}) == 3
    assert 58 < retry.retry_after({"retry-after": date}) <= 60
    assert retry.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry.retry_after({"retry-after": "soon"}) is None
    assert retry.retry_after({}) is None


@pytest.mark.django_db(transaction=True)
def test_a_run_announces_each_retry_on_its_stream(alice, settings, no_queue):
    with FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.fail(429, "rate limited", headers={"Retry-After": "0.2"})
        fake.script([text("Hello!")])
        thread = new_thread(alice, model="gpt-test")
        run = services.agent_start(user=alice, thread=thread, message="Hi")
        loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    events = logged(run)
    [retry_event] = [data for _, kind, data in events if kind == "model.retry"]
    assert retry_event == {
        "run": str(run.pk),
        "attempt": 1,
        "delay": 0.2,
        "reason": "the model server answered 429: rate limited",
    }
    kinds = [kind for _, kind, _ in events]
    assert kinds.index("model.retry") < kinds.index("message.delta")
