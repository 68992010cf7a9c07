"""The agents and connections pages: agents made, changed and deleted through their form with
the API's rules, providers and MCP servers added, refreshed and deleted, secrets never shown,
and other users' objects out of reach; the chat page's agent line and MCP tool cards."""

import re

import pytest
from django.test import Client
from django.utils import timezone

from agents import services, tools
from agents.models import Agent, McpServer, Provider, agent_of, create_thread
from runs.models import Message

pytestmark = pytest.mark.django_db

KEY = "sk-live-0123456789abcdef"
AUTH = "Bearer header-secret-42"
FORECAST = {
    "name": "weather__forecast",
    "tool": "forecast",
    "description": "The weather ahead",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def provider(alice):
    provider = Provider(owner=alice, name="Local", base_url="https://8.8.8.8/v1")
    provider.default_model = "llama3"
    provider.api_key = KEY
    provider.save()
    return provider


@pytest.fixture
def server(alice):
    server = McpServer(owner=alice, name="weather", url="https://8.8.8.8/mcp")
    server.headers = {"Authorization": AUTH}
    server.tools, server.tools_refreshed = [FORECAST], timezone.now()
    server.save()
    return server


@pytest.fixture
def bob_web(bob):
    client = Client()
    client.force_login(bob)
    return client


def agent_post(**fields):
    return {"name": "Helper", "model": "demo", "instructions": "Be brief.", **fields}


def test_the_nav_links_the_agents_page_which_lists_them(alice_web, provider):
    Agent.objects.filter(name="Demo").update(provider=provider, model="")
    page = alice_web.get("/chats/").content.decode()
    assert '<a href="/agents/"' in page
    page = alice_web.get("/agents/").content.decode()
    assert "Demo" in page and "llama3 · Local" in page  # the provider's default model
    assert f'<option value="{provider.pk}" data-default-model="llama3"' in page


def test_it_creates_an_agent_with_every_setting(alice, alice_web, provider, server):
    r = alice_web.post(
        "/agents/",
        agent_post(
            provider=provider.pk, model="", temperature="0.3", max_tokens="500",
            tools=["calculator"], mcp_servers=[server.pk],
        ),
    )  # fmt: skip
    assert r.status_code == 302 and r["Location"] == "/agents/"
    agent = alice.agents.get(name="Helper")
    assert (agent.provider, agent.model, agent.temperature, agent.max_tokens) == (
        provider, "", 0.3, 500
    )  # fmt: skip
    assert agent.tools == ["calculator"] and list(agent.mcp_servers.all()) == [server]
    assert agent.instructions == "Be brief."
    page = alice_web.get("/agents/").content.decode()
    assert "Created the agent “Helper”." in page


def test_the_form_offers_every_tool_for_approval_and_saves_the_choice(alice, alice_web, server):
    page = alice_web.get("/agents/").content.decode()
    assert 'name="tools" value="ask_user"' in page  # among the built-in tools
    offered = re.findall(r'name="approve_tools" value="([^"]*)"', page)
    assert offered == ["*", *(name for name in tools.names() if name != "ask_user"),
                       "weather__forecast"]  # fmt: skip
    assert '<span class="tool-server badge">weather</span> <code>forecast</code>' in page
    r = alice_web.post(
        "/agents/",
        agent_post(tools=["calculator", "ask_user"], mcp_servers=[server.pk],
                   approve_tools=["calculator", "weather__forecast", "calculator"]),
    )  # fmt: skip
    assert r.status_code == 302
    agent = alice.agents.get(name="Helper")
    assert agent.approve_tools == ["calculator", "weather__forecast"]
    assert agent.tools == ["calculator", "ask_user"]
    assert "asks first: calculator, weather__forecast" in alice_web.get("/agents/").content.decode()
    page = alice_web.get(f"/agents/{agent.pk}/").content.decode()
    assert 'name="approve_tools" value="calculator" checked' in page
    assert 'name="approve_tools" value="weather__forecast" checked' in page
    assert 'name="approve_tools" value="*" >' in page  # not checked
    # a name the API saved that no list offers any more is kept by a save of the form
    agent.approve_tools = ["gone__tool"]
    agent.save()
    page = alice_web.get(f"/agents/{agent.pk}/").content.decode()
    assert 'name="approve_tools" value="gone__tool" checked' in page
    alice_web.post(f"/agents/{agent.pk}/", agent_post(approve_tools=["gone__tool", "*"]))
    agent.refresh_from_db()
    assert agent.approve_tools == ["gone__tool", "*"]
    # the API's reasons, by the field; nothing saved
    r = alice_web.post(f"/agents/{agent.pk}/", agent_post(approve_tools=["x" * 201]))
    assert r.status_code == 400
    assert "Ensure this field has no more than 200 characters." in r.content.decode()
    agent.refresh_from_db()
    assert agent.approve_tools == ["gone__tool", "*"]
    # unticking them all saves none
    alice_web.post(f"/agents/{agent.pk}/", agent_post())
    agent.refresh_from_db()
    assert agent.approve_tools == []


def test_the_form_shows_the_apis_reasons_by_the_fields_and_keeps_what_was_typed(alice, alice_web):
    r = alice_web.post(
        "/agents/", agent_post(name="Demo", model="", temperature="7", tools=["nope"])
    )
    assert r.status_code == 400
    page = r.content.decode()
    assert "You already have an agent with this name." in page
    assert "Ensure this value is less than or equal to 2." in page
    assert "Unknown tools: nope." in page
    assert 'value="7"' in page and "Be brief." in page
    r = alice_web.post("/agents/", agent_post(model=""))
    assert "Name a model: the provider has no default model." in r.content.decode()
    assert alice.agents.count() == 1


def test_another_users_provider_or_server_is_a_form_error(alice, alice_web, bob):
    theirs = Provider.objects.create(owner=bob, name="Theirs", base_url="https://8.8.8.8/v1")
    their_server = McpServer.objects.create(owner=bob, name="s", url="https://8.8.8.8/mcp")
    for fields in ({"provider": theirs.pk}, {"mcp_servers": [their_server.pk]}):
        r = alice_web.post("/agents/", agent_post(**fields))
        assert r.status_code == 400
        assert "object does not exist" in r.content.decode()
    for bad in ("abc", "1.5", "99999999999999999999999"):
        assert alice_web.post("/agents/", agent_post(provider=bad)).status_code == 400
    assert not alice.agents.filter(name="Helper").exists()
    assert "Theirs" not in alice_web.get("/agents/").content.decode()


def test_it_edits_an_agent(alice, alice_web, provider, server):
    agent = alice.agents.get()
    page = alice_web.get(f"/agents/{agent.pk}/").content.decode()
    assert 'value="calculator" checked' in page and "forecast" in page
    r = alice_web.post(
        f"/agents/{agent.pk}/",
        agent_post(name="Renamed", provider=provider.pk, model="qwen", mcp_servers=[server.pk]),
    )
    assert r.status_code == 302
    agent.refresh_from_db()
    assert (agent.name, agent.provider, agent.model, agent.tools) == (
        "Renamed", provider, "qwen", []
    )  # fmt: skip
    assert agent.config == {"demo": {"words": 60, "delay_ms": 40}}  # not on the form: kept
    # back to the default provider, and no servers
    alice_web.post(f"/agents/{agent.pk}/", agent_post(name="Renamed", provider=""))
    agent.refresh_from_db()
    assert agent.provider is None and not agent.mcp_servers.exists()


def test_it_deletes_an_agent_and_its_chats_keep_going_without_one(alice, alice_web):
    agent = alice.agents.get()
    thread = create_thread(owner=alice, agent=agent)
    r = alice_web.post(f"/agents/{agent.pk}/delete/")
    assert r["Location"] == "/agents/"
    assert not Agent.objects.filter(pk=agent.pk).exists()
    thread.refresh_from_db()
    assert agent_of(thread) is None
    assert "no agent" in alice_web.get(f"/chats/{thread.pk}/").content.decode()


def test_another_users_objects_are_404s(bob_web, alice, provider, server):
    agent = alice.agents.get()
    for url in [f"/agents/{agent.pk}/"]:
        assert bob_web.get(url).status_code == 404
    for url in [
        f"/agents/{agent.pk}/",
        f"/agents/{agent.pk}/delete/",
        f"/connections/providers/{provider.pk}/delete/",
        f"/connections/mcp-servers/{server.pk}/refresh/",
        f"/connections/mcp-servers/{server.pk}/enable/",
        f"/connections/mcp-servers/{server.pk}/delete/",
    ]:
        assert bob_web.post(url, agent_post()).status_code == 404, url
    assert Agent.objects.filter(pk=agent.pk).exists()
    assert Provider.objects.filter(pk=provider.pk).exists()
    assert McpServer.objects.filter(pk=server.pk, enabled=True).exists()
    page = bob_web.get("/connections/").content.decode()
    assert "Local" not in page and "8.8.8.8" not in page


def test_it_needs_a_login_and_a_csrf_token(alice):
    for url in ["/agents/", "/connections/"]:
        assert Client().get(url)["Location"].startswith("/login/")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/agents/", agent_post()).status_code == 403
    assert client.post("/connections/providers/", {"name": "x"}).status_code == 403


def test_it_adds_a_provider_and_never_shows_its_key(alice, alice_web, settings):
    r = alice_web.post(
        "/connections/providers/",
        {
            "name": "Mine", "kind": "anthropic", "base_url": "https://8.8.8.8/v1",
            "api_key": KEY, "default_model": "claude", "headers": "X-Team: t-1",
        },
    )  # fmt: skip
    assert r["Location"] == "/connections/"
    provider = alice.providers.get()
    assert (provider.kind, provider.api_key, provider.headers) == (
        "anthropic", KEY, {"X-Team": "t-1"}
    )  # fmt: skip
    agent = alice.agents.get()
    agent.provider = provider
    agent.save()
    chat = create_thread(owner=alice, agent=agent)
    for url in [
        "/connections/",
        "/agents/",
        f"/agents/{agent.pk}/",
        "/chats/",
        f"/chats/{chat.pk}/",
    ]:
        page = alice_web.get(url).content.decode()
        assert KEY not in page and "t-1" not in page, url
    page = alice_web.get("/connections/").content.decode()
    assert "key set" in page and "X-Team" in page
    # refused: the reasons by the fields, the key not sent back
    r = alice_web.post(
        "/connections/providers/",
        {"name": "Mine", "kind": "cohere", "base_url": "http://127.0.0.1/v1", "api_key": KEY},
    )
    page = r.content.decode()
    assert r.status_code == 400
    assert "You already have a provider with this name." in page
    assert "not a valid choice" in page and "not a public address" in page
    assert KEY not in page
    r = alice_web.post(
        "/connections/providers/",
        {"name": "H", "kind": "openai", "base_url": "https://8.8.8.8/v1", "headers": "Host: x"},
    )
    assert "Host is set by Relay itself." in r.content.decode()
    settings.PROVIDERS_MAX_PER_USER = 1
    r = alice_web.post(
        "/connections/providers/", {"name": "Two", "kind": "openai", "base_url": "https://8.8.8.8/"}
    )
    assert "You have 1 providers, the most allowed" in r.content.decode()


def test_a_provider_agents_use_is_kept_and_the_page_says_why(alice, alice_web, provider):
    Agent.objects.filter(name="Demo").update(provider=provider)
    r = alice_web.post(f"/connections/providers/{provider.pk}/delete/", follow=True)
    assert "Agents use it: Demo. Change them first." in r.content.decode()
    assert Provider.objects.filter(pk=provider.pk).exists()
    Agent.objects.filter(name="Demo").update(provider=None)
    r = alice_web.post(f"/connections/providers/{provider.pk}/delete/", follow=True)
    assert "Deleted the provider “Local”." in r.content.decode()
    assert not Provider.objects.exists()


def test_it_adds_an_mcp_server_that_is_down_and_says_why(alice, alice_web, settings):
    settings.MCP_ALLOW_PRIVATE = True  # so 127.0.0.1:9 is tried, and refused at once
    r = alice_web.post(
        "/connections/mcp-servers/",
        {"name": "local", "url": "http://127.0.0.1:9/mcp", "headers": f"Authorization: {AUTH}"},
        follow=True,
    )
    page = r.content.decode()
    server = alice.mcp_servers.get()
    assert server.headers == {"Authorization": AUTH}
    assert server.tools_error
    assert "Added the MCP server “local”, but could not list its tools" in page
    assert server.tools_error in page.replace("&#x27;", "'")
    assert AUTH not in page and "Authorization" in page
    r = alice_web.post(f"/connections/mcp-servers/{server.pk}/refresh/", follow=True)
    assert f"Could not list the tools of “local”: {server.tools_error}" in r.content.decode()
    assert AUTH not in alice_web.get("/agents/").content.decode()


def test_the_mcp_server_form_shows_the_apis_reasons(alice, alice_web, server, settings):
    r = alice_web.post(
        "/connections/mcp-servers/",
        {"name": "weather", "url": "http://127.0.0.1:9/mcp", "headers": "no colon here"},
    )
    assert r.status_code == 400 and "Line 1 is not “Name: value”." in r.content.decode()
    r = alice_web.post(
        "/connections/mcp-servers/", {"name": "bad name", "url": "http://127.0.0.1:9/mcp"}
    )
    page = r.content.decode()
    assert "Use letters, digits, _ and -" in page and "not a public address" in page
    assert alice.mcp_servers.count() == 1


def test_it_lists_a_servers_tools_disables_and_deletes_it(alice, alice_web, server):
    page = alice_web.get("/connections/").content.decode()
    assert '<code title="The weather ahead">forecast</code>' in page
    r = alice_web.post(f"/connections/mcp-servers/{server.pk}/enable/", {"enabled": "0"})
    assert r["Location"] == "/connections/"
    server.refresh_from_db()
    assert server.enabled is False
    alice_web.post(f"/connections/mcp-servers/{server.pk}/enable/", {"enabled": "1"})
    server.refresh_from_db()
    assert server.enabled is True
    agent = alice.agents.get()
    agent.mcp_servers.add(server)
    alice_web.post(f"/connections/mcp-servers/{server.pk}/delete/")
    assert not McpServer.objects.exists() and not agent.mcp_servers.exists()


def test_the_chat_page_shows_the_agents_model_and_mcp_tool_servers(alice, alice_web, server):
    agent = alice.agents.get()
    agent.mcp_servers.add(server)
    page = alice_web.get("/chats/").content.decode()
    assert f'<option value="{agent.pk}">Demo (demo · default provider)</option>' in page
    thread = create_thread(owner=alice, agent=agent)
    run = services.agent_start(user=alice, thread=thread, message="Weather?")
    calls = [
        {"id": "c1", "name": "weather__forecast", "arguments": '{"city": "Oslo"}'},
        {"id": "c2", "name": "calculator", "arguments": '{"expression": "1+1"}'},
    ]
    thread.append_message(role=Message.Role.ASSISTANT, run=run, tool_calls=calls)
    page = alice_web.get(f"/chats/{thread.pk}/").content.decode()
    assert "Demo</a> · demo · default provider" in page
    assert (
        '<span class="tool-server badge">weather</span> <span class="tool-name">forecast</span>'
        in page
    )
    assert (
        '<span class="tool-server badge" hidden></span> <span class="tool-name">calculator' in page
    )
