"""The tools one agent may call: the built-ins it lists and the tools of its MCP servers, each a
`tools.Tool` under the name the model sees, so every call goes through `tools.call`."""

import contextlib
import functools
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from runs.loop import closing_connection

from . import tools
from .models import McpServer
from .tools import mcp

log = logging.getLogger(__name__)


def for_agent(agent, stop=None):
    """{name the model sees: Tool} for `agent`, in a stable order: built-ins, then servers.
    A server whose list is stale is listed again (the list it had serves if that fails), with
    no database connection held while it answers; `stop` cuts a listing short."""
    box = {name: tools.get(name) for name in agent.tools if tools.get(name) is not None}
    with closing_connection():
        servers = agent.mcp_servers.filter(enabled=True).order_by("name")
        servers = list(servers[: settings.MCP_SERVERS_MAX_PER_AGENT])
    for server in servers:
        if _stale(server) and not (stop and stop.is_set()):
            refresh_tools(server, stop=stop, saving=closing_connection)
        box.update(server_tools(server))
    return box


def server_tools(server):
    spec = connection(server)
    allowed = set(server.allowed_tools)
    return {
        listed["name"]: tools.Tool(
            name=listed["name"],
            description=listed["description"],
            parameters=listed["parameters"],
            func=functools.partial(_call, spec, listed["tool"]),
            timeout=settings.MCP_TIMEOUT + 1,  # the MCP call's own time limit comes first
            max_output=tools.DEFAULT_MAX_OUTPUT,
            server=server.name,
            stoppable=True,
        )
        for listed in server.tools
        if not allowed or listed["tool"] in allowed
    }


def _call(spec, tool, arguments, stop):
    return mcp.call_tool(spec, tool, arguments, timeout=settings.MCP_TIMEOUT, stop=stop)


def connection(server):
    return mcp.Server(
        name=server.name,
        transport=server.transport,
        url=server.url,
        headers=server.headers,
        command=tuple(server.command),
        allow_private=settings.MCP_ALLOW_PRIVATE,
    )


def _stale(server):
    if server.tools_refreshed is None:
        return True
    return timezone.now() - server.tools_refreshed > timedelta(seconds=settings.MCP_TOOLS_TTL)


def refresh_tools(server, *, stop=None, saving=contextlib.nullcontext):
    """List the server's tools again and keep them on its row (in the `saving` context).
    Returns None, or why listing failed (also kept, as `tools_error`; the tools listed before
    stay)."""
    try:
        listed = mcp.list_tools(connection(server), timeout=settings.MCP_LIST_TIMEOUT, stop=stop)
    except mcp.McpStopped:
        return "the run was stopped"
    except mcp.McpError as exc:
        server.tools_error = str(exc)
        with saving():
            McpServer.objects.filter(pk=server.pk).update(tools_error=server.tools_error)
        return server.tools_error
    kept, skipped = [], []
    for entry in listed:
        try:
            tools.check_schema(entry["parameters"])
        except tools.SchemaError as exc:
            skipped.append(f"{entry['tool']}: {exc}")
            continue
        kept.append(entry)
    left_out = len(kept) - settings.MCP_TOOLS_MAX_PER_SERVER
    kept = kept[: settings.MCP_TOOLS_MAX_PER_SERVER]
    names = mcp.model_names(server.name, [entry["tool"] for entry in kept])
    by_tool = {tool: name for name, tool in names.items()}
    server.tools = [
        {
            "name": by_tool[entry["tool"]],
            "tool": entry["tool"],
            "description": entry["description"],
            "parameters": entry["parameters"],
        }
        for entry in kept
    ]
    notes = [f"a tool with a schema that is not JSON Schema was left out: {s}" for s in skipped]
    if left_out > 0:
        notes.append(f"{left_out} tools beyond MCP_TOOLS_MAX_PER_SERVER were left out")
    server.tools_error = "; ".join(notes)[:2000]
    server.tools_refreshed = timezone.now()
    with saving():
        McpServer.objects.filter(pk=server.pk).update(
            tools=server.tools,
            tools_error=server.tools_error,
            tools_refreshed=server.tools_refreshed,
        )
    return None


def forget_tools(server):
    """Drop the cached list: the next run or refresh lists the server again."""
    server.tools, server.tools_refreshed, server.tools_error = [], None, ""
    McpServer.objects.filter(pk=server.pk).update(tools=[], tools_refreshed=None, tools_error="")
