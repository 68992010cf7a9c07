"""The agent loop, as a worker executes an agent run: stream the model's turns, call the tools
it asks for, save and announce every message. The engine (runs.loop) claims the run, holds its
lease and gives it its one terminal status."""

import collections
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

from runs import stream
from runs.loop import RunFailed, RunLoop, Stopped, Waiting, closing_connection, storable_text
from runs.models import InputRequest, Message

from . import llm, toolbox, tools
from .models import agent_of
from .tools.builtin import ASK_USER

INTERRUPTED = tools.ToolResult(
    None,
    "this call was interrupted (its worker was lost) and was not made again: it may or may not"
    " have taken effect",
)


class AgentLoop(RunLoop):
    """An agent run: the thread's conversation, answered by the run's agent. `converse()` is
    the conversation, which workflow runs' agent steps hold too.

    A call that needs a person (a tool in the agent's `approve_tools`, or `ask_user`) saves a
    request and the run waits (runs.loop.Waiting) once the turn's other calls are done; the
    answer enqueues it again, and this loop, on whichever worker claims it, finds the turn
    still open, makes its calls as the person decided and goes on."""

    waits = True  # workflow steps cannot wait: their calls that need a person are refused
    turns = 0  # the model turns this attempt has made

    def body(self):
        with closing_connection():
            agent = agent_of(self.run)
            if agent is None:
                raise RunFailed("the run's agent was deleted")
            history = history_messages(self.thread, agent)
            open_calls = self._open_calls()
        self.converse(agent, history, open_calls)

    def converse(self, agent, history, open_calls=()):
        """Model turns, with the tool calls they ask for, until the model answers without
        calling a tool. Returns that last assistant message. `open_calls`: the calls of the
        run's last turn that have no result yet (it waited), made first."""
        with closing_connection():
            model = llm.get_model(agent)
        box = toolbox.for_agent(agent, stop=self.stop)
        schemas = tools.schemas(box)
        if open_calls:
            self._call_tools(open_calls, box, agent, resumed=True)
            with closing_connection():
                history = history_messages(self.thread, agent)
        if self.turns:  # a workflow's earlier agent step made turns: the run goes on
            self.turn_ended()
        for _ in range(settings.RUN_MAX_TURNS):
            self._check()
            message = self._model_turn(model, history, schemas)
            self._check()
            if not message.tool_calls:
                return message
            self.turn_ended()  # before its calls are made: the integrations may end the run
            history.append(as_chat_message(message))
            results = self._call_tools(message.tool_calls, box, agent)
            history.extend(map(as_chat_message, results))
        raise RunFailed(
            f"the agent used all {settings.RUN_MAX_TURNS} model turns without finishing"
        )

    def _open_calls(self):
        """The calls of this run's last assistant message that no tool message answers."""
        last = self.run.messages.filter(role=Message.Role.ASSISTANT).order_by("position").last()
        if last is None or not last.tool_calls:
            return []
        answered = set(
            self.thread.messages.filter(
                role=Message.Role.TOOL, position__gt=last.position
            ).values_list("tool_call_id", flat=True)
        )
        return [call for call in last.tool_calls if call["id"] not in answered]

    def _call_tools(self, calls, box, agent, resumed=False):
        """The calls of one turn, at once (at most TOOLS_MAX_CALLS_PER_RUN together), each
        announced as it starts and ends; their results in the order the model asked. Calls
        beyond TOOLS_MAX_CALLS_PER_TURN are answered with an error and not run. When some wait
        for a person, the others are made, then the run waits (Waiting). `resumed`: the calls
        a lost attempt left without results, which are made again only if their tool only
        reads."""
        limit = settings.TOOLS_MAX_CALLS_PER_TURN
        refused = tools.ToolResult(None, f"too many tool calls in one turn (at most {limit})")
        with closing_connection():
            asked = {r.call: r for r in self.run.requests.filter(call__in=[c["id"] for c in calls])}
        jobs, waiting = [], False
        for i, call in enumerate(calls):
            job = (call, None, call["arguments"]) if i < limit else (call, refused, None)
            if i < limit and self._needs_person(call, box, agent):
                job = self._as_decided(call, box, asked.get(call["id"]))
            elif i < limit and resumed and not getattr(box.get(call["name"]), "repeatable", True):
                job = (call, INTERRUPTED, None)
            if job is None:
                waiting = True
            else:
                jobs.append(job)
        results = self._run_jobs(jobs, box)
        if waiting:
            raise Waiting
        return results

    def _run_jobs(self, jobs, box):
        if len(jobs) <= 1:
            return [self._call_tool(*job, box=box) for job in jobs]
        workers = min(len(jobs), settings.TOOLS_MAX_CALLS_PER_RUN)
        with ThreadPoolExecutor(workers, thread_name_prefix=f"run-{self.run.pk}-tools") as pool:
            futures = [pool.submit(self._call_tool, *job, box=box) for job in jobs]
            return [future.result() for future in futures]  # a stop raises Stopped here

    def _needs_person(self, call, box, agent):
        if call["name"] not in box:
            return False  # not the agent's to call: the call path answers it with an error
        return call["name"] == ASK_USER or agent.needs_approval(call["name"])

    def _as_decided(self, call, box, request):
        """The call as a person decided it: a job (call, result or None, arguments), or None
        while the decision is awaited (a request made now and announced, or still pending)."""
        if not self.waits:
            refusal = "this call needs a person's answer, and a workflow step cannot wait for one"
            return call, tools.ToolResult(None, refusal), None
        if request is None:
            checked = tools.check(call["name"], call["arguments"], box)
            if isinstance(checked, tools.ToolResult):
                return call, checked, None  # not worth a person's time: the model hears why
            arguments = checked[1]
            self._ask(call, question=arguments["question"] if call["name"] == ASK_USER else "")
            return None
        Status = InputRequest.Status
        if request.status == Status.APPROVED:
            return call, None, request.approved_arguments or call["arguments"]
        if request.status == Status.ANSWERED:
            return call, tools.ToolResult(request.answer, None), None
        if request.status == Status.DENIED:
            why = f": {request.reason}" if request.reason else ""
            return call, tools.ToolResult(None, f"the person denied this call{why}"), None
        return None  # pending

    def _ask(self, call, *, question):
        kind = InputRequest.Kind.QUESTION if question else InputRequest.Kind.APPROVAL
        with closing_connection():
            request, made = InputRequest.objects.get_or_create(
                run=self.run,
                call=call["id"],
                defaults={"kind": kind, "name": call["name"], "arguments": call["arguments"],
                          "question": question},
            )  # fmt: skip
        if made:
            stream.emit(self.run.pk, "input.requested", request=request.as_event())

    def _model_turn(self, model, history, schemas):
        """Stream one model turn into a new assistant message, announcing the text in coalesced
        deltas. The message is saved whatever happens, so a stopped or failed turn keeps what
        was written."""
        self.turns += 1
        with closing_connection():
            message = self.thread.append_message(role=Message.Role.ASSISTANT, run=self.run)
        text, calls, pending = [], [], []
        flushed = 0.0

        def flush():
            nonlocal flushed
            if pending and self.lease.held():
                stream.emit_delta(self.run.pk, message.pk, "".join(pending))
                pending.clear()
            flushed = time.monotonic()

        try:
            for item in model.stream(history, schemas, self.stop, deadline=self.deadline):
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
                elif isinstance(item, llm.Retrying) and self.lease.held():
                    stream.emit(self.run.pk, "model.retry", attempt=item.attempt,
                                delay=item.delay, reason=item.reason)  # fmt: skip
                if time.monotonic() > self.deadline:
                    break
        finally:
            flush()
            message.content = "".join(text)
            message.tool_calls = [] if self.stop.is_set() else calls
            # cut short by a shutdown, it is kept as it is and the next attempt answers anew
            message.interrupted = self.lease.handed_back
            # a lost run's message is the reaper's: it saved what was announced, or dropped it
            if self.lease.held():
                with closing_connection():
                    if message.content or message.tool_calls:
                        message.save(update_fields=["content", "tool_calls", "interrupted"])
                        stream.emit(self.run.pk, "message.done", message=message.as_event())
                    else:
                        message.delete()
        return message

    def _run_tool(self, call, name, arguments, allowed):
        """Announce the tool call and run it. A stop ends the run at once, without waiting for
        the tool: its late result is dropped, and the call stays unanswered (history_messages
        leaves such calls out), so nothing of it is written after the terminal status."""
        self._check()
        server = tool_server(name, allowed)
        stream.emit(self.run.pk, "tool.started", call=call, name=name, arguments=arguments,
                    server=server)  # fmt: skip
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
                if self.lease.handed_back:
                    error = "its worker shut down before the tool finished"
                stream.emit(self.run.pk, "tool.done", call=call, name=name, output=None,
                            error=error, server=server)  # fmt: skip
            raise Stopped
        return result

    def _call_tool(self, call, result, arguments, *, box):
        """Run the call with `arguments` (or answer it with `result`) and save its result as a
        tool message."""
        if result is None:
            result = self._run_tool(call["id"], call["name"], arguments, box)
        else:
            server = tool_server(call["name"], box)
            stream.emit(self.run.pk, "tool.started", call=call["id"], name=call["name"],
                        arguments=call["arguments"], server=server)  # fmt: skip
        output, error = storable_text(result.output), storable_text(result.error)
        if not self.lease.held():
            raise Stopped  # the run is another attempt's now: its result is not ours to save
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
            server=tool_server(call["name"], box),
        )
        stream.emit(self.run.pk, "message.done", message=message.as_event())
        return message


def tool_server(name, allowed):
    """The MCP server a tool comes from, or None for a built-in."""
    tool = allowed.get(name) if isinstance(allowed, Mapping) else None
    return (tool and tool.server) or None


def history_messages(thread, agent):
    """The thread as chat messages for the model. Tool calls that never got an answer (their
    run was stopped between the call and the result) are left out: providers refuse them; so
    are replies a lost worker left half written (kept, marked interrupted)."""
    messages = list(thread.messages.all())
    # each result answers the latest call with its id (the demo model's ids repeat)
    latest, answers = {}, collections.defaultdict(dict)
    for message in messages:
        if message.role == Message.Role.ASSISTANT:
            latest.update((call["id"], message.pk) for call in message.tool_calls)
        elif message.role == Message.Role.TOOL and message.tool_call_id in latest:
            answers[latest[message.tool_call_id]][message.tool_call_id] = message
    chat = [{"role": "system", "content": agent.instructions}] if agent.instructions else []
    for message in messages:
        if message.role == Message.Role.TOOL or message.interrupted:
            continue  # a result goes after the call it answers, below; a cut reply nowhere
        if message.role == Message.Role.ASSISTANT:
            results = answers[message.pk]
            message.tool_calls = [c for c in message.tool_calls if c["id"] in results]
            if not message.content and not message.tool_calls:
                continue
            chat.append(as_chat_message(message))
            # the calls of a turn end in any order (they run at once): answers go in theirs
            chat.extend(as_chat_message(results[c["id"]]) for c in message.tool_calls)
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
