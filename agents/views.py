"""The chat pages. They render what the database holds; the page's script starts and stops
runs through the JSON API and follows them on the SSE stream."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import OuterRef, Subquery
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from runs.errors import ThreadBusy
from runs.models import Message, Run
from runs.parsers import object_id

from .models import create_thread

CHATS_PER_PAGE = 50


@login_required
def chat_list(request):
    active = Run.objects.active_on(OuterRef("pk")).values("status")[:1]
    threads = request.user.threads.select_related("agent_link__agent")
    threads = threads.annotate(active_status=Subquery(active))
    # get_page: a page number that is not one (abc, 99) shows the first or the last page
    page = Paginator(threads, CHATS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "chats/list.html", {"page": page, "agents": request.user.agents.all()})


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
    thread = get_object_or_404(request.user.threads.select_related("agent_link__agent"), pk=pk)
    runs = chat_runs(thread)
    active = next((run for run in runs if run.is_active), None)
    return render(
        request,
        "chats/detail.html",
        {"thread": thread, "runs": runs, "active": active, "agents": request.user.agents.all()},
    )


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
    assistant message carrying `calls` (each tool call with its result message)."""
    runs = list(thread.runs.order_by("created"))
    by_id = {run.pk: run for run in runs}
    for run in runs:
        run.items = []
    results = {}
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
        for message in run.items:
            message.calls = [
                {**call, "result": results.get(call["id"])} for call in message.tool_calls
            ]
    return runs
