"""The pages: chats, agents and their connections (providers, MCP servers). They render what
the database holds; the chat page's script starts and stops runs through the JSON API and
follows them on the SSE stream. Forms are checked by the API's own serializers, so a page
accepts exactly what the API accepts."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from runs.errors import ServiceError, ThreadBusy
from runs.models import InputRequest, Message, Run
from runs.parsers import object_id

from . import toolbox, tools
from .api import AgentSerializer
from .connections import (
    McpServerSerializer,
    ProviderSerializer,
    connection_create,
    connection_delete,
    parse_headers,
)
from .models import Provider, agent_of, create_thread
from .tools.builtin import ASK_USER

CHATS_PER_PAGE = 50


@login_required
def chat_list(request):
    active = Run.objects.active_on(OuterRef("pk")).values("status")[:1]
    threads = request.user.threads.select_related("agent_link__agent")
    threads = threads.annotate(active_status=Subquery(active))
    # get_page: a page number that is not one (abc, 99) shows the first or the last page
    page = Paginator(threads, CHATS_PER_PAGE).get_page(request.GET.get("page"))
    agents = request.user.agents.select_related("provider")
    return render(request, "chats/list.html", {"page": page, "agents": agents})


@login_required
@require_POST
def chat_create(request):
    pk = object_id(request.POST.get("agent", ""))
    if pk is None:
        return HttpResponseBadRequest("agent: expected the id of one of your agents.")
    agent = get_object_or_404(request.user.agents, pk=pk)
    thread = create_thread(owner=request.user, agent=agent)
    return redirect("chat", pk=thread.pk)


@login_required
def chat_detail(request, pk):
    threads = request.user.threads.select_related("agent_link__agent__provider")
    thread = get_object_or_404(threads, pk=pk)
    runs = chat_runs(thread)
    active = next((run for run in runs if run.is_active), None)
    context = {
        "thread": thread,
        "agent": agent_of(thread),
        "runs": runs,
        "active": active,
        "follow_ups": thread.follow_ups.pending(),
        # for the request cards the script adds: a live request names the tool alone
        "tool_servers": tool_server_map(request.user),
        "blank_requests": [{"kind": kind} for kind in InputRequest.Kind.values],
    }
    return render(request, "chats/detail.html", context)


@login_required
def chat_messages(request, pk):
    """The conversation alone, for a page that must reload it (after a stream-reset)."""
    thread = get_object_or_404(request.user.threads, pk=pk)
    return render(request, "chats/_runs.html", {"runs": chat_runs(thread)})


@login_required
@require_POST
def chat_rename(request, pk):
    thread = get_object_or_404(request.user.threads, pk=pk)
    next_url = request.POST.get("next", "")
    if next_url and not is_local_path(next_url):
        return HttpResponseBadRequest("next: expected a path on this site.")
    thread.title = request.POST.get("title", "").strip()[:200]
    thread.save(update_fields=["title", "updated"])
    return HttpResponseRedirect(next_url) if next_url else redirect("chat", pk=thread.pk)


@login_required
@require_POST
def chat_delete(request, pk):
    thread = get_object_or_404(request.user.threads, pk=pk)
    try:
        thread.delete_if_idle()
    except ThreadBusy as exc:
        messages.error(request, exc.message)
        return redirect("chat", pk=pk)
    messages.success(request, f"Deleted “{thread}”.")
    return redirect("chats")


def is_local_path(url):
    """A path on this site: never another host (an open redirect), nor a relative URL, nor a
    control character (a newline would break the Location header)."""
    return (
        url.startswith("/")
        and url.isprintable()
        and url_has_allowed_host_and_scheme(url, allowed_hosts=None)
    )


def chat_runs(thread):
    """The thread's runs in order, each with `items`: its messages as the page shows them, an
    assistant message carrying `calls` (each tool call with its result message and the
    person's `request` about it, if it needed one: pending, its card; else what became of it)."""
    runs = list(thread.runs.order_by("created").prefetch_related("requests"))
    by_id = {run.pk: run for run in runs}
    for run in runs:
        run.items = []
    results = {}
    server_of = tool_servers(thread.owner)
    for message in thread.messages.all():
        if message.role == Message.Role.TOOL:
            results[message.tool_call_id] = message
            continue
        # an assistant message still being written is empty here: the stream brings it
        if message.role == Message.Role.ASSISTANT and not (message.content or message.tool_calls):
            continue
        if message.run_id in by_id:
            by_id[message.run_id].items.append(message)
    for run in runs:
        asked = {request.call: request for request in run.requests.all()}
        for message in run.items:
            message.calls = [
                {
                    **call,
                    **server_of(call["name"]),
                    "result": results.get(call["id"]),
                    "request": asked.get(call["id"]),
                }
                for call in message.tool_calls
            ]
    return runs


def tool_server_map(owner):
    """{"tools": {model's name: {"server", "tool"}}, "servers": [names]}: what tool_servers
    knows, for the page's script to map a tool's name back to its server as it does."""
    servers = list(owner.mcp_servers.all())
    listed = {
        entry["name"]: {"server": server.name, "tool": entry["tool"]}
        for server in servers
        for entry in server.tools
    }
    return {"tools": listed, "servers": [server.name for server in servers]}


def tool_servers(owner):
    """A function: the name of a tool the model called -> {"server", "tool"} if one of
    `owner`'s MCP servers has it, else {}. A saved call keeps the name alone; the servers'
    cached lists map it back, and a name they no longer list still shows its server if it
    reads `<server>__<tool>`."""
    known = tool_server_map(owner)
    listed, names = known["tools"], set(known["servers"])

    def lookup(name):
        if name in listed:
            return listed[name]
        server, sep, tool = name.partition("__")
        return {"server": server, "tool": tool} if sep and server in names else {}

    return lookup


# Agents and connections. Each form goes through the API's serializer with the page's request
# as its context (its `user` scopes the ids a form may name), and a write that loses a race is
# a reason on the form, as the API's is a 409 (runs.api.RaceSafeWrites).

RACE_LOST = "Something this refers to changed or was deleted meanwhile; try again."


def form_errors(errors):
    """A serializer's errors as {field: "reason reason"}, shown by each field."""

    def flat(detail):
        if isinstance(detail, dict):
            return [text for value in detail.values() for text in flat(value)]
        if isinstance(detail, list):
            return [text for value in detail for text in flat(value)]
        return [str(detail)]

    return {field: " ".join(flat(detail)) for field, detail in errors.items()}


def locked(objects):
    return objects.select_for_update(of=("self",))


def save_form(serializer, save):
    """Validate `serializer` and call `save()`; the errors by field, or {} once saved."""
    if not serializer.is_valid():
        return form_errors(serializer.errors)
    try:
        with transaction.atomic():
            save()
    except IntegrityError:
        return {"non_field_errors": RACE_LOST}
    except ServiceError as exc:
        return {"non_field_errors": exc.message}
    return {}


AGENT_TEXT_FIELDS = ["name", "provider", "model", "temperature", "max_tokens"]


def agent_form(agent):
    """An agent's fields as its form shows them: text, ids as strings."""
    return {
        "name": agent.name,
        "instructions": agent.instructions,
        "provider": str(agent.provider_id or ""),
        "model": agent.model,
        "temperature": "" if agent.temperature is None else str(agent.temperature),
        "max_tokens": "" if agent.max_tokens is None else str(agent.max_tokens),
        "tools": list(agent.tools),
        "mcp_servers": [str(pk) for pk in agent.mcp_servers.values_list("pk", flat=True)],
        "approve_tools": list(agent.approve_tools),
    }


def posted_agent(post):
    form = {field: post.get(field, "").strip() for field in AGENT_TEXT_FIELDS}
    form["instructions"] = post.get("instructions", "")
    form["tools"] = post.getlist("tools")
    form["mcp_servers"] = post.getlist("mcp_servers")
    form["approve_tools"] = post.getlist("approve_tools")
    return form


def agent_data(form):
    """The form's fields as the API takes them: an empty choice or number is null."""
    empty_is_null = {
        field: form[field] or None for field in ("provider", "temperature", "max_tokens")
    }
    return {**form, **empty_is_null}


EVERY_TOOL = "*"


def approvable_tools(builtin, servers, chosen):
    """The choices of the form's `approve_tools`, each {"value", "label", "server"}: every tool,
    the built-in tools but ask_user (it always asks), each server's tools by the model's name
    for them, and any chosen name none of these is (a tool its server no longer lists), so that
    saving the form keeps it."""
    choices = [{"value": EVERY_TOOL, "label": "every tool", "server": ""}]
    choices += [
        {"value": tool.name, "label": tool.name, "server": ""}
        for tool in builtin
        if tool.name != ASK_USER
    ]
    choices += [
        {"value": entry["name"], "label": entry["tool"], "server": server.name}
        for server in servers
        for entry in server.tools
    ]
    offered = {choice["value"] for choice in choices}
    choices += [
        {"value": name, "label": name, "server": ""} for name in chosen if name not in offered
    ]
    return choices


def agent_page(request, template, *, form, errors=None, agent=None, status=200):
    user = request.user
    builtin = [tools.get(name) for name in tools.names()]
    servers = list(user.mcp_servers.all())
    context = {
        "agent": agent,
        "form": form,
        "errors": errors or {},
        "providers": user.providers.all(),
        "servers": servers,
        "builtin_tools": builtin,
        "approvable": approvable_tools(builtin, servers, form["approve_tools"]),
        "agents": user.agents.select_related("provider").prefetch_related("mcp_servers"),
    }
    return render(request, template, context, status=status)


NEW_AGENT = {"provider": "", "model": "demo", "tools": [], "mcp_servers": [], "approve_tools": []}


@login_required
def agent_list(request):
    """The user's agents, and the form that makes one."""
    if request.method != "POST":
        return agent_page(request, "agents/list.html", form=NEW_AGENT)
    form = posted_agent(request.POST)
    serializer = AgentSerializer(data=agent_data(form), context={"request": request})
    errors = save_form(serializer, lambda: serializer.save(owner=request.user))
    if errors:
        return agent_page(request, "agents/list.html", form=form, errors=errors, status=400)
    messages.success(request, f"Created the agent “{serializer.instance}”.")
    return redirect("agents")


@login_required
def agent_edit(request, pk):
    if request.method != "POST":
        agent = get_object_or_404(request.user.agents, pk=pk)
        return agent_page(request, "agents/edit.html", form=agent_form(agent), agent=agent)
    form = posted_agent(request.POST)
    with transaction.atomic():
        # locked, as the API's update: a delete meanwhile waits, or this finds it gone (404),
        # never saves it back to life
        agent = get_object_or_404(locked(request.user.agents), pk=pk)
        serializer = AgentSerializer(agent, data=agent_data(form), context={"request": request})
        errors = save_form(serializer, serializer.save)
    if errors:
        return agent_page(
            request, "agents/edit.html", form=form, errors=errors, agent=agent, status=400
        )
    messages.success(request, f"Saved the agent “{agent}”.")
    return redirect("agents")


@login_required
@require_POST
def agent_delete(request, pk):
    agent = get_object_or_404(request.user.agents, pk=pk)
    agent.delete()  # as the API's delete: its threads and runs keep going, with no agent
    messages.success(request, f"Deleted the agent “{agent}”.")
    return redirect("agents")


def connections_page(request, *, forms=None, errors=None, status=200):
    """`forms` and `errors`: {"provider": …, "server": …}, for the form sent back."""
    user = request.user
    context = {
        "providers": user.providers.all(),
        "servers": user.mcp_servers.all(),
        "kinds": Provider.Kind.choices,
        "forms": forms or {},
        "errors": errors or {},
    }
    return render(request, "agents/connections.html", context, status=status)


def create_connection(request, serializer_class, form, headers_text):
    """Create a provider or MCP server of the user's from `form`: (the object, {}) or
    (None, the errors by field)."""
    try:
        headers = parse_headers(headers_text)
    except ValueError as exc:
        return None, {"headers": str(exc)}
    data = {**form, "headers": headers} if headers else form
    serializer = serializer_class(data=data, context={"request": request})
    errors = save_form(
        serializer, lambda: connection_create(serializer=serializer, owner=request.user)
    )
    return serializer.instance, errors


@login_required
def connections(request):
    return connections_page(request)


@login_required
@require_POST
def provider_create(request):
    post = request.POST
    # what the form shows again if it is refused: never the key, nor the headers' values
    form = {field: post.get(field, "").strip() for field in ("name", "kind", "base_url")}
    form["default_model"] = post.get("default_model", "").strip()
    data = {**form, "api_key": post.get("api_key", "")}
    provider, errors = create_connection(request, ProviderSerializer, data, post.get("headers", ""))
    if errors:
        return connections_page(
            request, forms={"provider": form}, errors={"provider": errors}, status=400
        )
    messages.success(request, f"Added the provider “{provider}”.")
    return redirect("connections")


@login_required
@require_POST
def provider_delete(request, pk):
    provider = get_object_or_404(request.user.providers, pk=pk)
    try:
        connection_delete(provider)
    except ServiceError as exc:
        messages.error(request, f"“{provider}” was not deleted. {exc.message}")
    else:
        messages.success(request, f"Deleted the provider “{provider}”.")
    return redirect("connections")


@login_required
@require_POST
def mcp_server_create(request):
    post = request.POST
    form = {field: post.get(field, "").strip() for field in ("name", "url")}
    server, errors = create_connection(request, McpServerSerializer, form, post.get("headers", ""))
    if errors:
        return connections_page(
            request, forms={"server": form}, errors={"server": errors}, status=400
        )
    # its tools now, so the person sees at once whether it answers
    refreshed(request, server, added=True)
    return redirect("connections")


def refreshed(request, server, added=False):
    """List the server's tools now, and say how that went."""
    error = toolbox.refresh_tools(server)
    if added and error:
        messages.error(
            request, f"Added the MCP server “{server}”, but could not list its tools: {error}"
        )
    elif added:
        messages.success(request, f"Added the MCP server “{server}”: {len(server.tools)} tools.")
    elif error:
        messages.error(request, f"Could not list the tools of “{server}”: {error}")
    else:
        messages.success(request, f"Listed the tools of “{server}”: {len(server.tools)}.")


@login_required
@require_POST
def mcp_server_refresh(request, pk):
    refreshed(request, get_object_or_404(request.user.mcp_servers, pk=pk))
    return redirect("connections")


@login_required
@require_POST
def mcp_server_enable(request, pk):
    enabled = request.POST.get("enabled") == "1"
    with transaction.atomic():
        server = get_object_or_404(locked(request.user.mcp_servers), pk=pk)
        serializer = McpServerSerializer(
            server, data={"enabled": enabled}, partial=True, context={"request": request}
        )
        errors = save_form(serializer, serializer.save)
    if errors:
        messages.error(request, " ".join(errors.values()))
    else:
        messages.success(request, f"{'Enabled' if enabled else 'Disabled'} “{server}”.")
    return redirect("connections")


@login_required
@require_POST
def mcp_server_delete(request, pk):
    server = get_object_or_404(request.user.mcp_servers, pk=pk)
    connection_delete(server)
    messages.success(request, f"Deleted the MCP server “{server}”; agents no longer call it.")
    return redirect("connections")
