"""A workflow run, as a worker executes it: the steps in order, each announced with step.started
and step.done and recorded as a StepRun. Agent steps converse exactly as agent runs do, on the
run's thread and stream."""

import json

from django.utils import timezone
from opentelemetry import trace

from agents.models import Agent, agent_of
from agents.runner import AgentLoop, history_messages
from runs import stream
from runs.loop import RunFailed, Stopped, closing_connection
from runs.models import Message

from .definition import evaluate, guarded_steps, render, render_arguments
from .models import StepRun

tracer = trace.get_tracer("relay.workflows")


class StepFailed(Exception):
    pass


class WorkflowLoop(AgentLoop):
    waits = False  # a step that waited would run again from its start on resume: not built

    def body(self):
        with closing_connection():
            started = self.run.workflow_run
            self.agent = agent_of(self.run)
            reusable = reusable_outputs(self.run)
        definition = started.definition
        context = {"inputs": started.inputs or {}, "steps": {}}
        skipped = set()
        for index, step in enumerate(definition["steps"]):
            self._check()
            # its status is set by _record; a stop is no error, a failure sets one there
            attributes = {"relay.step.id": step["id"], "relay.step.type": step["type"],
                          "relay.step.index": index}  # fmt: skip
            with tracer.start_as_current_span(
                f"step {step['id']}",
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ):
                if step["id"] in skipped:
                    self._record(step, index, StepRun.Status.SKIPPED)
                    continue
                if step["id"] in reusable:
                    output = reusable[step["id"]]
                    self._record(step, index, StepRun.Status.COMPLETED, output=output,
                                 reused=True)  # fmt: skip
                else:
                    output = self._step(step, index, context)
            context["steps"][step["id"]] = output
            if step["type"] == "condition" and not output:
                skipped.update(guarded_steps(definition, index))

    def _step(self, step, index, context):
        started = timezone.now()
        with closing_connection():
            StepRun.objects.update_or_create(
                run=self.run,
                step=step["id"],
                defaults={"index": index, "status": StepRun.Status.RUNNING, "started": started},
            )
        stream.emit(self.run.pk, "step.started", step=step["id"], index=index, status="running",
                    output=None, error="")  # fmt: skip
        try:
            output = getattr(self, f"_{step['type']}_step")(step, context)
        except Stopped:
            if self.lease.expired:  # cut off at the run's deadline: the step failed with it
                self._record(step, index, StepRun.Status.FAILED, error=self._over_time(),
                             started=started)  # fmt: skip
            else:
                self._record(step, index, StepRun.Status.STOPPED, started=started)
            raise
        except Exception as exc:  # a model, a tool or a condition: the step fails, named
            error = str(exc)
            self._record(step, index, StepRun.Status.FAILED, error=error, started=started)
            raise RunFailed(f"step '{step['id']}' failed: {error}") from exc
        self._record(step, index, StepRun.Status.COMPLETED, output=output, started=started)
        return output

    def _record(self, step, index, status, output=None, error="", reused=False, started=None):
        span = trace.get_current_span()  # the step's
        span.set_attributes({"relay.step.status": status, "relay.step.reused": reused})
        if status == StepRun.Status.FAILED:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        if not self.lease.held():  # the run is someone else's now: write nothing
            return
        with closing_connection():
            record, _ = StepRun.objects.update_or_create(
                run=self.run,
                step=step["id"],
                defaults={
                    "index": index,
                    "status": status,
                    "output": output,
                    "error": error,
                    "reused": reused,
                    "started": started,
                    "finished": timezone.now(),
                },
            )
        stream.emit(self.run.pk, "step.done", **record.as_event())

    def _tool_step(self, step, context):
        arguments = json.dumps(render_arguments(step.get("arguments", {}), context))
        call = f"step-{step['id']}"
        # the author named the tool in the definition: that is its permission
        result = self._run_tool(call, step["tool"], arguments, allowed=[step["tool"]])
        stream.emit(self.run.pk, "tool.done", call=call, name=step["tool"],
                    output=result.output, error=result.error, server=None)  # fmt: skip
        if result.error is not None:
            raise StepFailed(result.error)
        return result.output

    def _agent_step(self, step, context):
        with closing_connection():
            agent = self.agent
            if step.get("agent") is not None:
                agent = Agent.objects.filter(owner=self.run.owner, pk=step["agent"]).first()
            if agent is None:
                raise StepFailed(f"agent {step.get('agent')} no longer exists")
            prompt = self.thread.append_message(
                role=Message.Role.USER, run=self.run, content=render(step["prompt"], context)
            )
            history = history_messages(self.thread, agent)
        stream.emit(self.run.pk, "message.done", message=prompt.as_event())
        return self.converse(agent, history).content

    def _condition_step(self, step, context):
        return evaluate(step["when"], context)


def reusable_outputs(run):
    """The outputs of the steps that completed in the run this one retries."""
    if run.retry_of_id is None:
        return {}
    completed = StepRun.objects.filter(run_id=run.retry_of_id, status=StepRun.Status.COMPLETED)
    return {record.step: record.output for record in completed}
