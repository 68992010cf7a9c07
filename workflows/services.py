from agents.errors import ServiceError
from agents.lifecycle import run_start
from agents.models import Run

from .definition import check_inputs


def workflow_start(
    *, user, workflow, inputs, thread=None, if_busy="reject", trigger=Run.Trigger.API
):
    """Check the inputs against the workflow's declaration, then start a run of it on `thread`
    (a new one unless given). The run keeps the definition as it is now."""
    values, errors = check_inputs(workflow.definition, inputs)
    if errors:
        raise ServiceError("The inputs do not match the workflow's declaration.", inputs=errors)
    return run_start(
        user=user,
        thread=thread,
        title=workflow.name,
        agent=(thread and thread.agent) or user.agents.first(),
        if_busy=if_busy,
        trigger=trigger,
        workflow=workflow,
        definition=workflow.definition,
        inputs=values,
    )
