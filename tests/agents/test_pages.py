"""The chat pages as Django renders them: access, the list, rename and delete, and what the
Markdown of a reply may contain."""

import json
import re

import pytest
from django.test import Client

from agents import services
from agents.models import ThreadAgent, agent_of, create_thread
from runs import lifecycle
from runs.markdown import render
from runs.models import Message, Run, Thread

from conftest import waiting_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def thread(alice):
    return create_thread(owner=alice, agent=alice.agents.get(), title="Plans")


def test_it_sends_visitors_to_the_login_page(client):
    for url in ["/chats/", "/chats/1/", "/workflows/", "/schedules/"]:
        r = client.get(url)
        assert r.status_code == 302
        assert r["Location"].startswith("/login/")


def test_it_lists_chats_with_a_badge_while_a_run_is_active(alice, alice_web, thread):
    idle = create_thread(owner=alice, agent=alice.agents.get(), title="Idle")
    services.agent_start(user=alice, thread=thread, message="Go")
    page = alice_web.get("/chats/").content.decode()
    assert '<span class="badge queued">queued</span>' in page
    assert page.index("Plans") < page.index("Idle")  # the latest activity first
    assert f"/chats/{idle.pk}/" in page


def test_it_paginates_the_chat_list(alice, alice_web):
    agent = alice.agents.get()
    threads = Thread.objects.bulk_create(
        Thread(owner=alice, title=f"Chat {n:03}") for n in range(120)
    )
    ThreadAgent.objects.bulk_create(ThreadAgent(thread=t, agent=agent) for t in threads)
    first = alice_web.get("/chats/").content.decode()
    assert len(re.findall(r'href="/chats/\d+/"', first)) == 50
    assert "Chat 119" in first  # the latest first
    assert 'href="?page=2"' in first
    assert "Page 1 of 3" in first
    last = alice_web.get("/chats/?page=3").content.decode()
    assert len(re.findall(r'href="/chats/\d+/"', last)) == 20
    assert "Chat 000" in last
    assert 'href="?page=2"' in last
    assert 'href="?page=4"' not in last
    for page in ["abc", "99", "-1", "1e999"]:  # what a hand-edited address may hold
        assert alice_web.get(f"/chats/?page={page}").status_code == 200


def test_it_serves_a_favicon(alice_web):
    page = alice_web.get("/chats/").content.decode()
    assert '<link rel="icon" href="/static/relay/icon.svg" type="image/svg+xml">' in page
    r = Client().get("/favicon.ico", follow=True)  # what browsers ask for, the admin's pages too
    assert r.status_code == 200
    assert r["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(r.streaming_content)


def test_it_creates_renames_and_deletes_a_chat(alice, alice_web):
    r = alice_web.post("/chats/new/", {"agent": alice.agents.get().pk})
    thread = Thread.objects.get()
    assert r["Location"] == f"/chats/{thread.pk}/"
    alice_web.post(f"/chats/{thread.pk}/rename/", {"title": "  Renamed  "})
    thread.refresh_from_db()
    assert thread.title == "Renamed"
    r = alice_web.post(f"/chats/{thread.pk}/delete/")
    assert r["Location"] == "/chats/"
    assert not Thread.objects.exists()


def test_it_keeps_a_chat_with_an_active_run_and_says_why(alice, alice_web, thread):
    services.agent_start(user=alice, thread=thread, message="Go")
    r = alice_web.post(f"/chats/{thread.pk}/delete/", follow=True)
    assert "This thread has an active run; stop it first." in r.content.decode()
    assert Thread.objects.filter(pk=thread.pk).exists()


def test_it_hides_other_users_chats(bob, thread):
    client = Client()
    client.force_login(bob)
    assert client.get(f"/chats/{thread.pk}/").status_code == 404
    assert client.get(f"/chats/{thread.pk}/messages/").status_code == 404
    assert client.post(f"/chats/{thread.pk}/rename/", {"title": "x"}).status_code == 404
    assert client.post(f"/chats/{thread.pk}/delete/").status_code == 404
    assert client.post("/chats/new/", {"agent": agent_of(thread).pk}).status_code == 404


def test_it_renders_saved_messages_tool_cards_and_usage(alice, alice_web, thread):
    run = services.agent_start(user=alice, thread=thread, message="calc <b>6*7</b>")
    call = {"id": "c1", "name": "calculator", "arguments": '{"expression": "6*7"}'}
    thread.append_message(role=Message.Role.ASSISTANT, run=run, tool_calls=[call])
    thread.append_message(
        role=Message.Role.TOOL, run=run, tool_call_id="c1", name="calculator", content="42"
    )
    thread.append_message(role=Message.Role.ASSISTANT, run=run, content="The answer is **42**.")
    lifecycle.run_finish(run=run, status="completed", usage=(12, 5))
    page = alice_web.get(f"/chats/{thread.pk}/").content.decode()
    assert "calc &lt;b&gt;6*7&lt;/b&gt;" in page  # the user's text is text
    assert '<span class="tool-name">calculator</span>' in page
    assert '<pre class="tool-output">42</pre>' in page
    assert "The answer is <strong>42</strong>." in page
    assert "12 in · 5 out tokens" in page


def test_it_sanitizes_reply_markdown_and_keeps_code_readable():
    html = render(
        "Hi <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>\n\n"
        "```python\nprint('<b>')\n```"
    )
    assert "<script" not in html
    assert "javascript:" not in html
    assert "onerror" not in html
    assert "<pre><code class=\"language-python\">print('&lt;b&gt;')\n</code></pre>" in html


def test_the_admin_shows_threads_runs_and_their_records(alice, admin_client, thread):
    run = services.agent_start(user=alice, thread=thread, message="Go")
    for url in [
        f"/admin/runs/thread/{thread.pk}/change/",
        f"/admin/runs/run/{run.pk}/change/",
        "/admin/runs/run/?status__exact=queued",
        "/admin/workflows/workflow/add/",
    ]:
        assert admin_client.get(url).status_code == 200, url
    page = admin_client.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert "Go" in page  # its messages, inline


def test_the_page_scripts_get_the_statuses_and_markup_from_the_server(alice_web, thread):
    page = alice_web.get(f"/chats/{thread.pk}/").content.decode()
    statuses = re.search(r'id="relay-run-statuses"[^>]*>(.*?)</script>', page).group(1)
    assert json.loads(statuses) == {"active": list(Run.ACTIVE), "terminal": list(Run.TERMINAL)}
    # the tool card and run footer a stream adds are the server's own partials
    tool = re.search(
        r'<template id="tool-template">\s*(<details class="tool".*?)</template>', page, re.S
    )
    assert 'class="tool-state">running…</span>' in tool.group(1)
    footer = re.search(r'<template id="footer-template">(.*?)</template>', page, re.S).group(1)
    assert 'data-format="{in} in · {out} out tokens"' in footer
    # and the request cards, one of each kind, and the tools' servers to name in them
    for kind in ("approval", "question"):
        card = re.search(rf'<template id="request-{kind}-template">(.*?)</template>', page, re.S)
        assert f'<div class="request {kind}" data-request=""' in card.group(1)
    servers = re.search(r'id="relay-tool-servers"[^>]*>(.*?)</script>', page).group(1)
    assert json.loads(servers) == {"tools": {}, "servers": []}


@pytest.mark.django_db(transaction=True)
def test_a_reload_shows_what_a_waiting_run_asks_and_then_what_became_of_it(
    alice, alice_web, no_queue
):
    message = '/tool calculator {"expression": "6*7"}\n/tool ask_user {"question": "Which city?"}'
    run = waiting_run(alice, no_queue, message=message)
    assert run.status == Run.Status.WAITING
    approval, question = run.requests.order_by("kind")
    page = alice_web.get(f"/chats/{run.thread_id}/").content.decode()
    assert f'data-active-run="{run.pk}"' in page  # the page follows it: it may go on
    assert '<span class="badge waiting" data-role="status">waiting</span>' in page
    cards = re.findall(r'<div class="request (\w+)" data-request="(\d+)"', page)
    assert cards == [("approval", str(approval.pk)), ("question", str(question.pk))]
    prefilled = "{&quot;expression&quot;: &quot;6*7&quot;}"  # the model's JSON, as text
    assert f'<textarea name="arguments" rows="3" spellcheck="false">{prefilled}</textarea>' in page
    assert '<p class="request-question">Which city?</p>' in page
    assert page.count('<span class="tool-state">waiting</span>') == 2
    lifecycle.run_respond(run=run, request=approval.pk, approve=False, reason="not now")
    conversation = alice_web.get(f"/chats/{run.thread_id}/messages/").content.decode()
    assert '<strong data-role="record">denied: not now</strong>' in conversation
    assert '<p class="request-question">Which city?</p>' in conversation  # still asked
    lifecycle.run_respond(run=run, request=question.pk, answer="Oslo")
    conversation = alice_web.get(f"/chats/{run.thread_id}/messages/").content.decode()
    assert '<strong data-role="record">answered: Oslo</strong>' in conversation
    assert "<form" not in conversation


@pytest.mark.django_db(transaction=True)
def test_another_users_waiting_run_is_not_theirs_to_see_or_answer(alice, bob, no_queue):
    run = waiting_run(alice, no_queue)
    [request] = run.requests.all()
    client = Client()
    client.force_login(bob)
    assert client.get(f"/chats/{run.thread_id}/").status_code == 404
    assert client.get(f"/chats/{run.thread_id}/messages/").status_code == 404
    r = client.post(
        f"/api/runs/{run.pk}/respond/",
        json.dumps({"request": request.pk, "approve": True}),
        content_type="application/json",
    )
    assert r.status_code == 404
    request.refresh_from_db()
    assert request.status == "pending"
