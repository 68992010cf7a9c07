"""Providers and MCP servers in the admin: secrets typed in and never shown, stdio servers (which
only an administrator adds) with their command, and the refresh action against a real server."""

import pytest

from agents.models import McpServer, Provider

from mcp_servers import TOKEN, HttpServer

pytestmark = pytest.mark.django_db

KEY = "sk-admin-typed-0123456789"


def test_a_providers_key_is_typed_in_kept_encrypted_and_never_shown(alice, admin_client):
    r = admin_client.post(
        "/admin/agents/provider/add/",
        {"owner": alice.pk, "name": "P", "kind": "anthropic", "base_url": "https://8.8.8.8/",
         "default_model": "claude", "new_api_key": KEY, "new_headers": "X-Org: org-1"},
    )  # fmt: skip
    assert r.status_code == 302, r.content.decode()[:2000]
    provider = Provider.objects.get()
    assert provider.api_key == KEY and provider.headers == {"X-Org": "org-1"}
    page = admin_client.get(f"/admin/agents/provider/{provider.pk}/change/").content.decode()
    assert KEY not in page and "org-1" not in page and provider.api_key_sealed not in page
    # saved again with the boxes empty: the key and headers stay
    r = admin_client.post(
        f"/admin/agents/provider/{provider.pk}/change/",
        {"owner": alice.pk, "name": "P", "kind": "anthropic", "base_url": "https://8.8.8.8/",
         "default_model": "claude", "new_api_key": "", "new_headers": ""},
    )  # fmt: skip
    assert r.status_code == 302
    provider.refresh_from_db()
    assert provider.api_key == KEY and provider.headers == {"X-Org": "org-1"}


def test_bad_headers_are_refused_in_the_admin_as_in_the_api(alice, admin_client):
    r = admin_client.post(
        "/admin/agents/provider/add/",
        {"owner": alice.pk, "name": "P", "kind": "openai", "base_url": "https://8.8.8.8/",
         "new_headers": "Host: evil"},
    )  # fmt: skip
    assert r.status_code == 200 and "set by Relay itself" in r.content.decode()
    assert not Provider.objects.exists()


def test_an_administrator_adds_a_stdio_server_with_its_command(alice, admin_client):
    r = admin_client.post(
        "/admin/agents/mcpserver/add/",
        {"owner": alice.pk, "name": "local", "transport": "stdio", "url": "", "command": "[]",
         "enabled": "on", "allowed_tools": "[]"},
    )  # fmt: skip
    assert r.status_code == 200 and "needs its command" in r.content.decode()
    r = admin_client.post(
        "/admin/agents/mcpserver/add/",
        {"owner": alice.pk, "name": "local", "transport": "stdio", "url": "",
         "command": '["python", "server.py"]', "enabled": "on", "allowed_tools": "[]"},
    )  # fmt: skip
    assert r.status_code == 302, r.content.decode()[:2000]
    assert McpServer.objects.get().command == ["python", "server.py"]


def test_the_refresh_action_lists_the_tools_or_says_why_not(alice, admin_client, settings):
    settings.MCP_ALLOW_PRIVATE = True
    server = HttpServer(require_token=True).start()
    try:
        good = McpServer.objects.create(owner=alice, name="good", url=server.url,
                                        headers={"Authorization": TOKEN})  # fmt: skip
        down = McpServer.objects.create(owner=alice, name="down", url="http://127.0.0.1:9/mcp")
        r = admin_client.post(
            "/admin/agents/mcpserver/",
            {"action": "refresh", "_selected_action": [good.pk, down.pk]},
            follow=True,
        )
    finally:
        server.stop()
    said = [str(message) for message in r.context["messages"]]
    assert any(m.startswith("down: cannot reach the MCP server") for m in said), said
    good.refresh_from_db()
    assert f"good: {len(good.tools)} tools" in said, said
    assert "good__echo" in [tool["name"] for tool in good.tools]
