"""The agent loop, as a worker executes it: claim the run, stream the model's turns, call the
tools it asks for, save and announce every message, finish with one terminal status.

A run spends its life waiting on the model, so it holds no database connection while it
waits: every database step goes through `closing_connection()`, which closes the connection
after it."""

import contextlib
import json
import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from django.db.models import Q

from . import llm, stream, tools
from .eventstream import EventDoesNotExist
from .lifecycle import run_claim, run_finish
from .models import Message, Run
from .worker import worker

log = logging.getLogger(__name__)


def storable_text(text):
    """Text from a model or a tool, with its NUL characters replaced: PostgreSQL refuses them."""
    return text.replace("\x00", "\ufffd") if text else text


class Stopped(Exception):
    pass


class RunFailed(Exception):
    pass


@contextlib.contextmanager
def closing_connection():
    try:
        yield
    finally:
        connection.close()


def execute(run_id):
    with closing_connection():
        run = run_claim(run_id=run_id, worker=worker.id)
    if run is None:
        return
    lease = worker.hold(run.pk, time.monotonic() + settings.RUN_TIME_LIMIT)
    try:
        if run.definition is not None:
            from workflows.runner import WorkflowLoop

            WorkflowLoop(run, lease).execute()
        else:
            AgentLoop(run, lease).execute()
    finally:
        lease.release()


class RunLoop:
    """What every run does around its body: the time limit, stop, usage, and one terminal
    status. Subclasses write `body()`; `converse()` is the agent conversation they share.

    The worker holds the run's `lease`: it sets `stop` at the deadline (so a model that says
    nothing is cut off too), and when the run turns out not to be ours any more, after which
    the loop writes nothing (`lease.held()`)."""

    def __init__(self, run, lease):
        self.run = run
        self.thread = run.thread
        self.agent = run.agent
        self.lease = lease
        self.stop = lease.stop
        self.deadline = lease.deadline
        self.input_tokens = 0
        self.output_tokens = 0

    def body(self):
        raise NotImplementedError

    def execute(self):
        status, error = Run.Status.COMPLETED, ""
        try:
            self.body()
        except Stopped:
            if self.lease.expired:  # the worker cut the run off at its deadline
                status, error = Run.Status.FAILED, self._over_time()
            else:
                status = Run.Status.STOPPED
        except (RunFailed, llm.ModelError) as exc:
            status, error = Run.Status.FAILED, str(exc)
        except SoftTimeLimitExceeded:  # Celery's limit, under the prefork pool
            status, error = Run.Status.FAILED, self._over_time()
        except Exception as exc:
            log.exception("run %s failed", self.run.pk)
            status, error = Run.Status.FAILED, f"internal error: {type(exc).__name__}: {exc}"
        if not self.lease.held():
            log.warning("run %s: lost its lease; whoever took it ends it", self.run.pk)
            return
        if self.input_tokens or self.output_tokens:
            stream.emit(
                self.run.pk,
                "usage",
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
            )
        with closing_connection():
            run_finish(
                run=self.run,
                status=status,
                error=error,
                where=Q(attempt=self.run.attempt),
                usage=(self.input_tokens, self.output_tokens),
            )

    def converse(self, agent, history):
        """Model turns, with the tool calls they ask for, until the model answers without
        calling a tool. Returns that last assistant message."""
        model = llm.get_model(agent)
        schemas = tools.schemas(agent.tools)
        for _ in range(settings.RUN_MAX_TURNS):
            self._check()
            message = self._model_turn(model, history, schemas)
            self._check()
            if not message.tool_calls:
                return message
            history.append(as_chat_message(message))
            for call in message.tool_calls:
                self._check()
                history.append(as_chat_message(self._call_tool(call, agent)))
        raise RunFailed(
            f"the agent used all {settings.RUN_MAX_TURNS} model turns without finishing"
        )

    def _check(self):
        if self.stop.is_set():
            raise Stopped
        if time.monotonic() > self.deadline:
            raise RunFailed(self._over_time())

    def _over_time(self):
        return f"the run took longer than its time limit ({settings.RUN_TIME_LIMIT} s)"

    def _model_turn(self, model, history, schemas):
        """Stream one model turn into a new assistant message, announcing the text in coalesced
        deltas. The message is saved whatever happens, so a stopped or failed turn keeps what
        was written."""
        with closing_connection():
            message = self.thread.append_message(role=Message.Role.ASSISTANT, run=self.run)
        text, calls, pending = [], [], []
        flushed = 0.0

        def flush():
            nonlocal flushed
            if pending and self.lease.held():
                # the format logged_texts() reads back
                stream.emit(self.run.pk, "message.delta", message=message.pk, text="".join(pending))
                pending.clear()
            flushed = time.monotonic()

        try:
            for item in model.stream(history, schemas, self.stop):
                if isinstance(item, llm.TextDelta):
                    text.append(storable_text(item.text))
                    pending.append(text[-1])
                    # at most one delta per window: the first token goes at once, a burst
                    # waits for the window to close
                    if time.monotonic() - flushed >= settings.RUN_DELTA_SECONDS:
                        flush()
                elif isinstance(item, llm.ToolCall):
                    calls.append(
                        {
                            "id": storable_text(item.id),
                            "name": storable_text(item.name),
                            "arguments": storable_text(item.arguments),
                        }
                    )
                elif isinstance(item, llm.Usage):
                    self.input_tokens += item.input_tokens
                    self.output_tokens += item.output_tokens
                if time.monotonic() > self.deadline:
                    break
        finally:
            flush()
            message.content = "".join(text)
            message.tool_calls = [] if self.stop.is_set() else calls
            # a lost run's message is the reaper's: it saved what was announced, or dropped it
            if self.lease.held():
                with closing_connection():
                    if message.content or message.tool_calls:
                        message.save(update_fields=["content", "tool_calls"])
                        stream.emit(self.run.pk, "message.done", message=message.as_event())
                    else:
                        message.delete()
        return message

    def _run_tool(self, call, name, arguments, allowed):
        """Announce the tool call and run it. A stop ends the run at once, without waiting for
        the tool: its late result is dropped, and the call stays unanswered (history_messages
        leaves such calls out), so nothing of it is written after the terminal status."""
        stream.emit(self.run.pk, "tool.started", call=call, name=name, arguments=arguments)
        result = tools.call(
            name,
            arguments,
            allowed=allowed,
            user=self.run.owner_id,
            run=self.run.pk,
            stop=self.stop,
        )
        if self.stop.is_set():
            if self.lease.held():  # a lost run is someone else's to end
                error = "the run was stopped before the tool finished"
                if self.lease.expired:
                    error = "the run reached its time limit before the tool finished"
                stream.emit(self.run.pk, "tool.done", call=call, name=name, output=None,
                            error=error)  # fmt: skip
            raise Stopped
        return result

    def _call_tool(self, call, agent):
        result = self._run_tool(call["id"], call["name"], call["arguments"], agent.tools)
        output, error = storable_text(result.output), storable_text(result.error)
        with closing_connection():
            message = self.thread.append_message(
                role=Message.Role.TOOL,
                run=self.run,
                name=call["name"],
                tool_call_id=call["id"],
                content=output if error is None else f"Error: {error}",
                is_error=error is not None,
            )
        stream.emit(
            self.run.pk,
            "tool.done",
            call=call["id"],
            name=call["name"],
            output=output,
            error=error,
        )
        stream.emit(self.run.pk, "message.done", message=message.as_event())
        return message


def logged_texts(run_id):
    """The text of each assistant message as the run's event log has it, by message id: its
    message.delta events (as RunLoop writes them) joined. Empty when the log is gone or no
    longer holds its start (Redis lost it, or the cap trimmed it)."""
    try:
        events = stream.StreamStorage().get_events(
            f"run-{run_id}", 0, limit=settings.RUN_EVENTS_MAXLEN
        )
    except (EventDoesNotExist, redis.RedisError):
        return {}
    texts = {}
    for event in events:
        if event.type == "message.delta":
            data = json.loads(event.data)
            texts[data["message"]] = texts.get(data["message"], "") + data["text"]
    return texts


class AgentLoop(RunLoop):
    """An agent run: the thread's conversation, answered by the run's agent."""

    def body(self):
        if self.agent is None:
            raise RunFailed("the run's agent was deleted")
        with closing_connection():
            history = history_messages(self.thread, self.agent)
        self.converse(self.agent, history)


def history_messages(thread, agent):
    """The thread as chat messages for the model. Tool calls that never got an answer (their
    run was stopped between the call and the result) are left out: providers refuse them."""
    messages = list(thread.messages.all())
    answered = {m.tool_call_id for m in messages if m.role == Message.Role.TOOL}
    chat = [{"role": "system", "content": agent.instructions}] if agent.instructions else []
    for message in messages:
        if message.role == Message.Role.ASSISTANT:
            message.tool_calls = [c for c in message.tool_calls if c["id"] in answered]
            if not message.content and not message.tool_calls:
                continue
        chat.append(as_chat_message(message))
    return chat


def as_chat_message(message):
    if message.role == Message.Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    chat = {"role": message.role, "content": message.content}
    if message.tool_calls:
        chat["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in message.tool_calls
        ]
    return chat
