"""Agent runs as the engine knows them: the kind agents register (runs.kinds), and the start the
API, the pages and schedules call."""

from runs import kinds
from runs.errors import ServiceError
from runs.lifecycle import run_start
from runs.models import Run

from .models import Agent, RunAgent, ThreadAgent, agent_of
from .runner import AgentLoop


class AgentRuns(kinds.Kind):
    """A run of the thread's conversation, answered by an agent: the one named, or the
    thread's."""

    name = "agent"
    loop = AgentLoop

    def check(self, *, user, thread, agent=None):
        agent = agent or (thread and agent_of(thread))
        if agent is None:
            raise ServiceError("This thread has no agent; name one.", field="agent")
        return {"agent": agent}

    def attach(self, run, *, made_thread, agent):
        link_agent(run, agent, made_thread=made_thread)

    def keep(self, details):
        return {"agent": details["agent"].pk}

    def restore(self, kept):
        agent = Agent.objects.filter(pk=kept.get("agent")).first()
        if agent is None:
            raise ServiceError("The agent this message was sent to no longer exists.")
        return {"agent": agent}


def link_agent(run, agent, *, made_thread):
    """Record the agent a new run uses, and that of the thread the start made for it."""
    RunAgent.objects.create(run=run, agent=agent)
    if made_thread:
        ThreadAgent.objects.create(thread=run.thread, agent=agent)


def agent_start(*, user, message, thread=None, agent=None, title="", if_busy="reject",
                trigger=Run.Trigger.API, webhook=None):  # fmt: skip
    """Start an agent run that answers `message` on `thread` (a new one unless given), by
    `agent` or else the thread's; its end is POSTed to `webhook` if given (webhooks app)."""
    return run_start(
        user=user,
        kind=AgentRuns.name,
        thread=thread,
        title=title,
        message=message,
        if_busy=if_busy,
        trigger=trigger,
        agent=agent,
        options={"webhook": webhook} if webhook else None,
    )
