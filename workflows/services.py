"""Workflow runs as the engine knows them: the kind workflows register (runs.kinds), and the start
the API, the pages and schedules call."""

from agents.models import agent_of
from agents.services import link_agent
from runs import kinds
from runs.errors import ServiceConflict, ServiceError
from runs.lifecycle import run_start
from runs.models import Run

from .definition import check_inputs
from .models import WorkflowRun
from .runner import WorkflowLoop


class WorkflowRuns(kinds.Kind):
    """A run of a workflow's steps, on a thread; its agent steps use the thread's agent (or the
    user's first) unless they name one."""

    name = "workflow"
    loop = WorkflowLoop
    retryable = True

    def check(self, *, user, thread, workflow, inputs, definition=None, agent=None):
        """A new run takes the workflow's definition as it is now and checks the inputs against
        it; a retry (`definition` given) keeps those of the run it retries."""
        if definition is None:
            definition = workflow.definition
            inputs, errors = check_inputs(definition, inputs)
            if errors:
                raise ServiceError(
                    "The inputs do not match the workflow's declaration.", inputs=errors
                )
        agent = agent or (thread and agent_of(thread)) or user.agents.first()
        return {"workflow": workflow, "definition": definition, "inputs": inputs, "agent": agent}

    def attach(self, run, *, made_thread, workflow, definition, inputs, agent):
        link_agent(run, agent, made_thread=made_thread)
        WorkflowRun.objects.create(run=run, workflow=workflow, definition=definition, inputs=inputs)

    def retry(self, run):
        """A retry runs what the failed run ran: it reuses the outputs of the steps that
        completed and continues from the one that failed (WorkflowLoop)."""
        started = WorkflowRun.objects.filter(run=run).first()
        if started is None:
            raise ServiceConflict("Only a failed workflow run can be retried.")
        return {
            "workflow": started.workflow,
            "definition": started.definition,
            "inputs": started.inputs,
            "agent": agent_of(run),
        }


def workflow_start(
    *, user, workflow, inputs, thread=None, if_busy="reject", trigger=Run.Trigger.API, webhook=None
):
    """Start a run of `workflow` with `inputs` (checked against its declaration) on `thread`, a
    new one unless given. The run keeps the definition as it is now. Its end is POSTed to
    `webhook` if given (webhooks app)."""
    return run_start(
        user=user,
        kind=WorkflowRuns.name,
        thread=thread,
        title=workflow.name,
        if_busy=if_busy,
        trigger=trigger,
        workflow=workflow,
        inputs=inputs,
        options={"webhook": webhook} if webhook else None,
    )
