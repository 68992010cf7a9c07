"""The chat page in a real headless Chromium (Debian's package, driven by Playwright) against the
live web and worker processes."""

import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from agents import services
from agents.models import McpServer, Provider, create_thread
from runs import lifecycle, stream
from runs.models import Message, Run
from workflows.models import Workflow

from conftest import bearer, pace, start, start_live, wait_for_status
from examples import THREE_STEPS
from fakellm import FakeLLM, text

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def browser(live):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous code all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live, alice):
    yield from signed_in(browser, live.base_url)


def signed_in(browser, base_url):
    """A page of a new browser context, logged in as alice on the site at `base_url`; it fails
    the test if the page logged errors."""
    context = browser.new_context(base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.errors = errors
    page.goto("/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base_url}/chats/")
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def open_chat(page, user):
    thread = create_thread(owner=user, agent=user.agents.get())
    page.goto(f"/chats/{thread.pk}/")
    return thread


def send(page, text):
    page.fill("#composer textarea", text)
    page.press("#composer textarea", "Enter")


def status(page):
    return page.locator("section.run").last.locator('[data-role="status"]')


def streaming(page):
    return page.locator("section.run").last.locator(".message.assistant").last


def test_it_logs_in_starts_a_chat_and_streams_the_reply(page, alice):
    pace(alice, words=60, delay_ms=60)
    page.select_option("select[name=agent]", label="Demo (demo · default provider)")
    page.click("text=New chat")
    expect(page.locator("#composer textarea")).to_be_enabled()
    send(page, "Tell me about streams")
    expect(page.locator(".message.user").last).to_have_text("Tell me about streams")
    reply = streaming(page)
    expect(reply).to_have_class("message assistant streaming")
    first = len(reply.inner_text())
    page.wait_for_timeout(400)
    assert len(reply.inner_text()) > first, "the reply does not grow"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-mid-stream.png", full_page=True)
    expect(page.locator("#send")).to_have_text("Queue")  # a message now waits for the reply
    expect(status(page)).to_have_text("completed")
    saved = Message.objects.filter(role="assistant").get()
    assert reply.inner_text().strip() == saved.content
    expect(page.locator('[data-role="usage"]').last).to_contain_text("out tokens")
    expect(page.locator("#send")).to_have_text("Send")
    page.click("text=Chats")
    expect(page.locator(".threads li")).to_contain_text("Tell me about streams")


def test_it_continues_the_text_after_a_reload_mid_run(page, alice):
    pace(alice, words=80, delay_ms=50)
    thread = open_chat(page, alice)
    send(page, "A long one, please")
    reply = streaming(page)
    page.wait_for_function(
        "() => (document.querySelector('.message.assistant')?.innerText || '').length > 60"
    )
    before = reply.inner_text()
    page.reload()
    expect(streaming(page)).to_have_class("message assistant streaming")
    page.wait_for_function(
        "n => (document.querySelector('.message.assistant')?.innerText || '').length >= n",
        arg=len(before),
    )
    assert streaming(page).inner_text().startswith(before)
    expect(status(page)).to_have_text("completed")
    saved = thread.messages.get(role="assistant").content
    assert streaming(page).inner_text().strip() == saved  # no doubled or missing word


def test_it_stops_a_run_within_a_second(page, alice):
    pace(alice, words=1000, delay_ms=30)
    thread = open_chat(page, alice)
    send(page, "Go on forever")
    expect(streaming(page)).to_have_class("message assistant streaming")
    clicked = time.monotonic()
    page.click("#stop")
    expect(status(page)).to_have_text("stopped", timeout=1500)
    took = time.monotonic() - clicked
    assert took < 1.5, f"stopped after {took:.2f} s"
    run = wait_for_status(thread.runs.get().pk, Run.Status.STOPPED)
    assert streaming(page).inner_text().strip() == run.messages.get(role="assistant").content
    expect(page.locator("#stop")).to_be_hidden()


def test_it_shows_a_tool_call_as_a_card(page, alice):
    open_chat(page, alice)
    send(page, "Please calculate 6 * 7")
    card = page.locator("details.tool")
    expect(card.locator(".tool-name")).to_have_text("calculator")
    expect(card.locator(".tool-state")).to_have_text("done")
    card.locator("summary").click()
    expect(card.locator(".tool-arguments")).to_contain_text('"expression": "6 * 7"')
    expect(card.locator(".tool-output")).to_have_text("42")
    expect(streaming(page)).to_have_text("The answer is 42.")
    page.reload()  # and the same from the database
    expect(page.locator("details.tool .tool-output")).to_have_text("42")


def test_an_mcp_tools_card_shows_its_server_live_and_after_a_reload(page, alice):
    # its tools as listed a moment ago (the worker does not list them again), at an address
    # the worker refuses (not public): the call fails at once, and the card says so
    server = McpServer.objects.create(
        owner=alice, name="weather", url="http://127.0.0.1:9/mcp", tools_refreshed=timezone.now(),
        tools=[{"name": "weather__forecast", "tool": "forecast", "description": "The weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    )  # fmt: skip
    alice.agents.get().mcp_servers.add(server)
    open_chat(page, alice)
    send(page, '/tool weather__forecast {"city": "Oslo"}\n/tool calculator {"expression": "1+1"}')
    forecast = page.locator("details.tool").first
    expect(forecast.locator(".tool-server")).to_have_text("weather")
    expect(forecast.locator(".tool-name")).to_have_text("forecast")
    expect(forecast.locator(".tool-state")).to_have_text("error")
    calculator = page.locator("details.tool").last
    expect(calculator.locator(".tool-name")).to_have_text("calculator")
    expect(calculator.locator(".tool-server")).to_be_hidden()
    expect(status(page)).to_have_text("completed")
    page.reload()  # and the same from the database
    expect(page.locator("details.tool").first.locator(".tool-server")).to_have_text("weather")
    expect(page.locator("details.tool").first.locator(".tool-name")).to_have_text("forecast")
    expect(page.locator("details.tool").last.locator(".tool-server")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-mcp-tool.png", full_page=True)


def test_a_retry_notice_shows_until_the_reply_comes(browser, alice, tmp_path, own_redis):
    """A model server that answers the first call 429 with Retry-After: 3, then the reply: the
    worker retries (web and worker processes of the test's own, on a Redis of its own, with
    retries on and the default provider at the fake), and the page says so until the text
    comes."""
    with FakeLLM() as fake:
        fake.fail(429, "slow down", headers={"Retry-After": "3"})
        fake.script([text("Here after the wait.")])
        processes = start_live(tmp_path, REDIS_URL=own_redis.url, LLM_BASE_URL=fake.base_url,
                               LLM_MAX_RETRIES="2")  # fmt: skip
        try:
            pages = signed_in(browser, processes.base_url)
            page = next(pages)
            pace(alice, words=5, delay_ms=0, model="remote-model")
            open_chat(page, alice)
            send(page, "Are you there?")
            notice = page.locator('section.run [data-role="retry"]')
            expect(notice).to_have_text(
                "Provider busy (the model server answered 429: slow down), retrying in 3 s"
                " — attempt 1"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "chat-retry.png", full_page=True)
            expect(streaming(page)).to_have_text("Here after the wait.")
            expect(notice).to_have_count(0)
            expect(status(page)).to_have_text("completed")
            next(pages, None)  # its context closes, and its errors are checked
        finally:
            processes.stop_all()
    assert [r.at - fake.requests[0].at >= 2.9 for r in fake.requests] == [False, True]


def test_the_agent_form_shows_the_providers_default_model(page, alice):
    provider = Provider.objects.create(
        owner=alice, name="Local", base_url="https://8.8.8.8/v1", default_model="llama3"
    )
    page.click("text=Agents")
    form = page.locator("form.agent-form")
    form.locator("input[name=name]").fill("Helper")
    form.locator("input[name=model]").fill("")
    expect(form.locator("input[name=model]")).to_have_attribute(
        "placeholder", "a model name, e.g. demo"
    )
    form.locator("select[name=provider]").select_option(label="Local")
    expect(form.locator("input[name=model]")).to_have_attribute(
        "placeholder", "llama3 (the provider's default)"
    )
    form.locator("input[name=tools][value=calculator]").check()
    form.locator("input[name=approve_tools][value=calculator]").check()
    form.get_by_role("button", name="Create agent").click()
    expect(page.locator(".notice")).to_contain_text("Created the agent “Helper”.")
    expect(page.locator(".agents li", has_text="Helper")).to_contain_text("llama3 · Local")
    agent = alice.agents.get(name="Helper")
    assert (agent.provider, agent.model, agent.tools) == (provider, "", ["calculator"])
    assert agent.approve_tools == ["calculator"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "agents.png", full_page=True)
    page.click("text=Providers and MCP servers")
    page.screenshot(path=ARTIFACTS / "connections.png", full_page=True)


def test_a_second_tab_follows_the_same_run(page, alice):
    pace(alice, words=200, delay_ms=40)
    thread = open_chat(page, alice)
    other = page.context.new_page()
    other.goto(f"/chats/{thread.pk}/")
    send(page, "Both tabs")
    expect(streaming(other)).to_have_class("message assistant streaming", timeout=5000)
    expect(status(other)).to_have_text("completed")
    expect(status(page)).to_have_text("completed")
    assert streaming(other).inner_text() == streaming(page).inner_text()


def test_pages_on_a_thread_show_a_run_started_by_the_api_at_once_without_polling(page, alice, live):
    pace(alice, words=200, delay_ms=30)
    thread = create_thread(owner=alice, agent=alice.agents.get())
    other = page.context.new_page()
    requested = []
    for tab in (page, other):
        tab.on("request", lambda request: requested.append(urlsplit(request.url).path))
        tab.goto(f"/chats/{thread.pk}/")
    page.wait_for_timeout(2500)  # longer than the period the page polled the thread at
    run_id = start(live, bearer(alice), thread, message="Started by the API")
    for tab in (page, other):
        expect(streaming(tab)).to_have_class("message assistant streaming", timeout=2000)
        expect(tab.locator(".message.user").last).to_have_text("Started by the API")
    expect(status(other)).to_have_text("completed")
    expect(status(page)).to_have_text("completed")
    assert (
        streaming(other).inner_text().strip()
        == thread.messages.get(run_id=run_id, role="assistant").content
    )
    assert f"/api/threads/{thread.pk}/" not in requested, "the page polled the thread"
    assert requested.count(f"/api/threads/{thread.pk}/events/") == 2  # one stream a page


def test_a_page_sees_a_run_started_elsewhere_after_the_server_came_back(page, alice, live):
    """Whether the run is still active when the page's stream is back (it follows it) or has
    ended (it reloads the conversation), the page shows it."""
    pace(alice, words=100, delay_ms=20)
    thread = create_thread(owner=alice, agent=alice.agents.get())
    thread_stream = f"**/api/threads/{thread.pk}/events/"
    opened = []
    page.on(
        "request",
        lambda r: r.url.endswith(f"/api/threads/{thread.pk}/events/") and opened.append(r),
    )
    with page.expect_response(thread_stream):
        page.goto(f"/chats/{thread.pk}/")
    live.stop("web", signal.SIGKILL)
    try:
        page.wait_for_timeout(5000)  # the page is left without a server for a while
    finally:
        live.start_web()
    # the browser reconnects at its own pace (every 3 s), not in a loop
    assert 1 <= len(opened) - 1 <= 3, f"{len(opened) - 1} attempts in 5 s"
    run_id = start(live, bearer(alice), thread, message="After the restart")
    expect(page.locator(".message.user").last).to_have_text("After the restart", timeout=10_000)
    expect(status(page)).to_have_text("completed")
    assert (
        streaming(page).inner_text().strip()
        == thread.messages.get(run_id=run_id, role="assistant").content
    )
    # the browser logged the broken stream and its refused reconnects: expected here
    page.errors[:] = [e for e in page.errors if "net::ERR_" not in e]


def test_it_resumes_after_the_web_process_restarts(page, alice, live):
    pace(alice, words=150, delay_ms=40)
    thread = open_chat(page, alice)
    send(page, "Keep going")
    expect(streaming(page)).to_have_class("message assistant streaming")
    live.stop("web", signal.SIGKILL)
    try:
        expect(page.locator("#notice")).to_contain_text("reconnecting")
    finally:
        live.start_web()
    expect(status(page)).to_have_text("completed", timeout=20_000)
    # the browser logged the broken stream and its refused reconnects: expected here
    page.errors[:] = [e for e in page.errors if "net::ERR_" not in e]
    expect(page.locator("#notice")).to_be_hidden()
    assert streaming(page).inner_text().strip() == thread.messages.get(role="assistant").content


def test_it_shows_what_went_wrong_on_the_page(page, alice, settings):
    # a model that cannot be reached: the run fails, and the page says why
    pace(alice, words=5, delay_ms=0, model="gpt-unreachable")
    open_chat(page, alice)
    send(page, "Hello?")
    expect(status(page)).to_have_text("failed")
    expect(page.locator("#notice")).to_contain_text("cannot reach the model")
    # too many runs: the 429 is on the page
    pace(alice, words=1000, delay_ms=50, model="demo")
    busy = [create_thread(owner=alice, agent=alice.agents.get()) for _ in range(10)]
    runs = [services.agent_start(user=alice, thread=t, message="busy") for t in busy]
    try:
        send(page, "One more")
        expect(page.locator("#notice")).to_contain_text("active runs, the most allowed")
        page.errors[:] = [e for e in page.errors if "429" not in e]  # the browser logs the 429
    finally:
        for run in runs:
            lifecycle.run_stop(run=run)
        for run in runs:
            wait_for_status(run.pk, Run.TERMINAL)


def test_it_interrupts_the_active_run_when_the_person_asks(page, alice):
    pace(alice, words=1000, delay_ms=30)
    thread = open_chat(page, alice)
    send(page, "First question")
    expect(streaming(page)).to_have_class("message assistant streaming")
    expect(page.locator("#send")).to_have_text("Queue")
    page.check("input[name=interrupt]")
    expect(page.locator("#send")).to_have_text("Send")
    send(page, "Second question")
    expect(page.locator("section.run").first.locator('[data-role="status"]')).to_have_text(
        "stopped"
    )
    expect(page.locator(".message.user").last).to_have_text("Second question")
    expect(status(page)).to_have_text("running")
    first, second = thread.runs.order_by("created")
    assert first.status == Run.Status.STOPPED
    page.click("#stop")
    expect(status(page)).to_have_text("stopped")
    wait_for_status(second.pk, Run.Status.STOPPED)


def test_it_fits_a_phone(browser, live, alice):
    context = browser.new_context(
        base_url=live.base_url, viewport={"width": 390, "height": 844}, is_mobile=True
    )
    page = context.new_page()
    page.goto("/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password")
    page.click("button[type=submit]")
    open_chat(page, alice)
    send(page, "calculate 2 + 2")
    expect(page.locator("details.tool .tool-state")).to_have_text("done")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-phone.png", full_page=True)
    for url in ["/agents/", "/connections/"]:
        page.goto(url)
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{url} is {overflow} px wider than the phone"
    context.close()


def test_it_reloads_from_the_server_on_stream_reset(page, alice):
    pace(alice, words=300, delay_ms=30)
    thread = open_chat(page, alice)
    send(page, "Long enough to trim")
    page.wait_for_function(
        "() => (document.querySelector('.message.assistant')?.innerText || '').length > 40"
    )
    run = thread.runs.get()
    # the log lost its beginning (MAXLEN on a long run): a page loaded now cannot replay it
    stream.client().xtrim(stream.log_key(run.channel), maxlen=2, approximate=False)
    with page.expect_response(f"**/chats/{thread.pk}/messages/"):
        page.reload()
    expect(status(page)).to_have_text("completed")
    assert streaming(page).inner_text().strip() == thread.messages.get(role="assistant").content


def test_it_queues_a_message_on_a_thread_busy_elsewhere(page, alice):
    pace(alice, words=1000, delay_ms=30)
    thread = create_thread(owner=alice, agent=alice.agents.get())
    # hold the thread's stream, so the page does not know of the run started elsewhere
    page.route(f"**/api/threads/{thread.pk}/events/", lambda route: None)
    page.goto(f"/chats/{thread.pk}/")
    run = services.agent_start(user=alice, thread=thread, message="Started elsewhere")
    try:
        send(page, "Me too")
        expect(page.locator("#follow-ups .message.user.queued")).to_contain_text("Me too")
        expect(page.locator("#notice")).to_be_hidden()
        assert thread.follow_ups.pending().get().message == "Me too"
    finally:
        thread.follow_ups.all().delete()
        lifecycle.run_stop(run=run)
        wait_for_status(run.pk, Run.TERMINAL)


def test_a_message_sent_during_a_reply_runs_after_it_in_order(page, alice):
    pace(alice, words=30, delay_ms=60)
    thread = open_chat(page, alice)
    send(page, "First question")
    expect(streaming(page)).to_have_class("message assistant streaming")
    queued = page.locator("#follow-ups .message.user.queued")
    send(page, "Second question")
    expect(queued).to_have_count(1)  # a person sends the next once this one shows
    send(page, "Third question")
    expect(queued).to_have_count(2)
    expect(queued.first).to_contain_text("Second question")
    expect(page.locator("section.run")).to_have_count(1)  # they wait for the reply
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-queued.png", full_page=True)
    expect(page.locator("section.run")).to_have_count(3, timeout=30_000)
    expect(queued).to_have_count(0)
    expect(status(page)).to_have_text("completed", timeout=30_000)
    runs = list(thread.runs.order_by("created"))
    assert [r.status for r in runs] == [Run.Status.COMPLETED] * 3
    texts = page.locator("#runs .message.user").all_inner_texts()
    assert texts == ["First question", "Second question", "Third question"]
    saved = list(thread.messages.order_by("position").values_list("role", flat=True))
    assert saved == ["user", "assistant"] * 3
    for section, run in zip(page.locator("section.run").all(), runs, strict=True):
        reply = thread.messages.get(run=run, role="assistant").content
        assert section.locator(".message.assistant").inner_text().strip() == reply


def test_it_runs_a_workflow_from_its_form(page, alice):
    workflow = Workflow.objects.create(owner=alice, name="Sum and explain", definition=THREE_STEPS)
    page.click("text=Workflows")
    page.click("text=Sum and explain")
    page.fill("input[name=a]", "40")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/workflows/runs/[0-9a-f-]+/$"))
    step = page.locator('[data-step="sum"]')
    expect(step.locator('[data-role="status"]')).to_have_text("completed")
    expect(step.locator('[data-role="output"]')).to_have_text("42")
    expect(page.locator('[data-step="shout"] [data-role="status"]')).to_have_text("skipped")
    expect(page.locator("#run-status")).to_have_text("completed")
    run = Run.objects.get(workflow_run__workflow=workflow)
    explain = run.steps.get(step="explain").output
    expect(page.locator('[data-step="explain"] [data-role="output"]')).to_have_text(explain)
    # a bad input comes back to the form with the reason
    page.goto(f"/workflows/{workflow.pk}/")
    page.fill("input[name=a]", "")
    page.evaluate("document.querySelector('input[name=a]').removeAttribute('required')")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".notice.error")).to_contain_text("inputs.a: this input is required")


def test_the_api_docs_page_renders_every_endpoint_from_this_server_alone(page, live):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto("/api/docs/")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/api/threads/{id}/runs/", "/api/runs/{run_id}/events/"} <= paths
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "api-docs.png")
    elsewhere = [url for url in requested if not url.startswith(live.base_url)]
    assert elsewhere == [], "the docs page asked another origin"


CALC = '/tool calculator {"expression": "6*7"}'


def asks_first(user, tools=("calculator",), approve=("calculator",)):
    """The user's agent with `tools`, a person approving each call of those in `approve`."""
    pace(user, words=5, tools=list(tools), approve_tools=list(approve))


def test_it_asks_to_approve_a_tool_call_and_goes_on_once_approved(page, alice):
    asks_first(alice)
    thread = open_chat(page, alice)
    send(page, CALC)
    card = page.locator(".request.approval")
    expect(card.locator(".tool-name")).to_have_text("calculator")
    expect(card.locator("textarea[name=arguments]")).to_have_value('{"expression": "6*7"}')
    expect(status(page)).to_have_text("waiting")
    expect(page.locator("details.tool .tool-state")).to_have_text("waiting")
    expect(page.locator("#send")).to_have_text("Queue")  # the run is active
    expect(page.locator("#stop")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-approval.png", full_page=True)
    card.get_by_role("button", name="Approve").click()
    expect(card.locator('[data-role="record"]')).to_have_text("approved")
    tool = page.locator("details.tool")
    expect(tool.locator(".tool-state")).to_have_text("done")
    expect(tool.locator(".tool-output")).to_have_text("42")
    expect(streaming(page)).to_have_text("The answer is 42.")
    expect(status(page)).to_have_text("completed")
    expect(page.locator("#composer textarea")).to_be_enabled()
    request = Run.objects.get(thread=thread).requests.get()
    assert (request.status, request.approved_arguments) == ("approved", "")


def test_it_runs_the_call_with_the_arguments_as_the_person_edited_them(page, alice):
    asks_first(alice)
    thread = open_chat(page, alice)
    send(page, CALC)
    card = page.locator(".request.approval")
    arguments = card.locator("textarea[name=arguments]")
    arguments.fill("6*8")  # not JSON: the card says why, and nothing is decided
    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".request-error")).to_contain_text("The arguments must be a JSON object")
    page.errors[:] = [e for e in page.errors if "400" not in e]  # the browser logs the 400
    arguments.fill('{"expression": "6*8"}')
    card.get_by_role("button", name="Approve").click()
    expect(card.locator('[data-role="record"]')).to_have_text("approved with edited arguments")
    expect(page.locator("details.tool .tool-output")).to_have_text("48")
    expect(page.locator("details.tool .tool-arguments")).to_have_text('{"expression": "6*8"}')
    expect(streaming(page)).to_have_text("The answer is 48.")
    expect(status(page)).to_have_text("completed")
    request = Run.objects.get(thread=thread).requests.get()
    assert request.approved_arguments == '{"expression": "6*8"}'


def test_a_denied_call_tells_the_model_why(page, alice):
    asks_first(alice)
    open_chat(page, alice)
    send(page, CALC)
    card = page.locator(".request.approval")
    card.locator("input[name=reason]").fill("not today")
    card.locator("input[name=reason]").press("Enter")  # denies, as the Deny button does
    expect(card.locator('[data-role="record"]')).to_have_text("denied: not today")
    expect(page.locator("details.tool .tool-state")).to_have_text("error")
    expect(streaming(page)).to_contain_text("the person denied this call: not today")
    expect(status(page)).to_have_text("completed")


def test_it_asks_the_person_a_question_and_goes_on_with_the_answer(page, alice):
    asks_first(alice, tools=["ask_user"], approve=[])
    open_chat(page, alice)
    send(page, '/tool ask_user {"question": "Which city?"}')
    expect(page.locator(".request.question .request-question")).to_have_text("Which city?")
    expect(status(page)).to_have_text("waiting")
    page.reload()  # the card the server renders answers as well
    card = page.locator(".request.question")
    expect(card.locator(".request-question")).to_have_text("Which city?")
    expect(status(page)).to_have_text("waiting")
    card.locator("textarea[name=answer]").fill("Oslo")
    card.locator("textarea[name=answer]").press("Enter")
    expect(card.locator('[data-role="record"]')).to_have_text("answered: Oslo")
    expect(streaming(page)).to_have_text("The ask_user tool answered: Oslo")
    expect(status(page)).to_have_text("completed")
    expect(page.locator("#composer textarea")).to_be_enabled()


def test_a_second_tab_sees_the_request_and_its_answer_live(page, alice):
    asks_first(alice)
    thread = open_chat(page, alice)
    other = page.context.new_page()
    other.goto(f"/chats/{thread.pk}/")
    send(page, CALC)
    for tab in (page, other):
        expect(tab.locator(".request.approval .tool-name")).to_have_text("calculator")
        expect(status(tab)).to_have_text("waiting")
    other.locator(".request.approval").get_by_role("button", name="Approve").click()
    for tab in (page, other):
        expect(tab.locator('.request [data-role="record"]')).to_have_text("approved")
        expect(tab.locator(".request form")).to_have_count(0)
        expect(streaming(tab)).to_have_text("The answer is 42.")
        expect(status(tab)).to_have_text("completed")


def test_a_stop_cancels_what_the_run_asks(page, alice):
    asks_first(alice)
    thread = open_chat(page, alice)
    send(page, CALC)
    expect(status(page)).to_have_text("waiting")
    page.click("#stop")
    expect(status(page)).to_have_text("stopped")
    expect(page.locator('.request [data-role="record"]')).to_have_text("cancelled")
    assert Run.objects.get(thread=thread).requests.get().status == "cancelled"


def test_an_mcp_tools_approval_card_shows_its_server_live_and_after_a_reload(page, alice):
    # listed a moment ago, so the worker does not list its tools again; it is never called
    server = McpServer.objects.create(
        owner=alice, name="weather", url="http://127.0.0.1:9/mcp", tools_refreshed=timezone.now(),
        tools=[{"name": "weather__forecast", "tool": "forecast", "description": "The weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    )  # fmt: skip
    asks_first(alice, tools=[], approve=["weather__forecast"])
    alice.agents.get().mcp_servers.add(server)
    open_chat(page, alice)
    send(page, '/tool weather__forecast {"city": "Oslo"}')
    for _ in range(2):  # live, then as the server renders it
        card = page.locator(".request.approval")
        expect(card.locator(".tool-server")).to_have_text("weather")
        expect(card.locator(".tool-name")).to_have_text("forecast")
        expect(card.locator("textarea[name=arguments]")).to_have_value('{"city": "Oslo"}')
        expect(status(page)).to_have_text("waiting")
        page.reload()
    card.get_by_role("button", name="Deny").click()
    expect(card.locator('[data-role="record"]')).to_have_text("denied")
    expect(streaming(page)).to_contain_text("the person denied this call")


def test_an_answer_that_came_first_elsewhere_is_a_409_in_the_card(page, alice):
    asks_first(alice)
    thread = open_chat(page, alice)
    send(page, CALC)
    expect(status(page)).to_have_text("waiting")
    run = thread.runs.get()
    # this page hears nothing more of the run (as if offline) and shows the card it was served
    page.route(f"**/api/runs/{run.pk}/events/**", lambda route: None)
    page.reload()
    card = page.locator(".request.approval")
    expect(card.locator("textarea[name=arguments]")).to_have_value('{"expression": "6*7"}')
    lifecycle.run_respond(run=run, request=run.requests.get().pk, approve=False)  # elsewhere
    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".request-error")).to_contain_text(
        "This request is not pending (it is denied"
    )
    expect(card.get_by_role("button", name="Approve")).to_be_enabled()  # nothing was decided
    page.errors[:] = [e for e in page.errors if "409" not in e]  # the browser logs the 409
    wait_for_status(run.pk, Run.Status.COMPLETED)


def test_an_open_page_sees_a_run_resume_on_another_worker_without_losing_a_word(page, live, alice):
    """A deploy stops the worker mid-reply (SIGTERM): the run is handed back, the next worker
    resumes it, and the open page shows the cut reply as interrupted, then the whole new one,
    each exactly as the database has it."""
    pace(alice, words=150, delay_ms=30)
    thread = open_chat(page, alice)
    send(page, "Tell me something long")
    expect(streaming(page)).to_contain_text(" ")  # it is streaming
    live.stop("worker", signal.SIGTERM)  # hands the run back, and exits
    live.start_worker()  # the next worker takes it
    expect(status(page)).to_have_text("completed", timeout=30_000)
    cut, whole = thread.messages.filter(role="assistant").order_by("position")
    assert cut.interrupted and len(whole.content.split()) == 150
    replies = page.locator("section.run").last.locator(".message.assistant")
    expect(replies).to_have_count(2)
    expect(replies.first).to_have_class(re.compile(r"\binterrupted\b"))
    assert replies.first.inner_text().strip().startswith(cut.content.strip()[:40])
    expect(replies.last).to_have_text(whole.content)
    page.reload()  # and the same from the database
    replies = page.locator("section.run").last.locator(".message.assistant")
    expect(replies.first).to_have_class(re.compile(r"\binterrupted\b"))
    expect(replies.last).to_have_text(whole.content)
