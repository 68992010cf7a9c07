"""Anthropic's Messages API on the `anthropic` SDK, fed the OpenAI-format messages and tools
every Model takes."""

import json

import anthropic
import httpx2

from . import transport
from .base import ModelError, TextDelta, ToolCall, Usage
from .retry import Unavailable

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires a limit; this one leaves room for a long answer
# Error events worth another attempt when they come before any output
RETRIED_ERRORS = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


class AnthropicModel(transport.RemoteModel):
    system = "anthropic"  # the tracing spans' gen_ai.system

    def _call(self, messages, tools, stop):
        if stop.is_set():
            return
        http = self.http_client(stop)
        headers = dict(self.headers)
        if not self.api_key:  # the SDK wants a key; an empty one means none is sent
            headers.update({"Authorization": anthropic.omit, "X-Api-Key": anthropic.omit})
        client = anthropic.Anthropic(
            base_url=self.base_url,
            api_key=self.api_key or "none",
            timeout=http.timeout,
            max_retries=0,  # every retry is ours, and announced
            default_headers=headers,
            http_client=http,
        )
        system, turns = anthropic_messages(messages)
        options = {"system": system} if system else {}
        if tools:
            options["tools"] = anthropic_tools(tools)
        if self.temperature is not None:
            # this SDK's create() has no temperature parameter: it goes in the body as is
            options["extra_body"] = {"temperature": self.temperature}
        try:
            with http, client:
                events = client.messages.create(
                    model=self.model,
                    messages=turns,
                    max_tokens=DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens,
                    stream=True,
                    **options,
                )
                yield from self._items(events, stop)
        except (anthropic.APIError, httpx2.HTTPError) as e:
            if stop.is_set():
                return  # our own shutdown broke the call: the run was stopped
            raise self._failure(e) from e

    def _items(self, events, stop):
        calls = {}  # block index -> {"id", "name", "arguments"}
        input_tokens = output_tokens = 0
        for event in events:
            if event.type == "message_start":
                usage = event.message.usage
                input_tokens = sum(
                    getattr(usage, name, None) or 0
                    for name in (
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                    )
                )
            elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                block = event.content_block
                calls[event.index] = {"id": block.id, "name": block.name, "arguments": ""}
            elif event.type == "content_block_delta":
                if event.delta.type == "text_delta" and event.delta.text:
                    yield TextDelta(event.delta.text)
                elif event.delta.type == "input_json_delta" and event.index in calls:
                    calls[event.index]["arguments"] += event.delta.partial_json or ""
            elif event.type == "message_delta" and event.usage:
                output_tokens = event.usage.output_tokens or output_tokens
        # A stop ends the stream early: a tool call seen so far may be cut short.
        if stop.is_set():
            return
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")
        yield Usage(input_tokens, output_tokens)

    def _failure(self, error):
        if isinstance(error, anthropic.APIStatusError) and error.status_code >= 400:
            return transport.status_failure(error.response)
        if isinstance(error, anthropic.APIConnectionError):
            error = error.__cause__ or error
        if isinstance(error, httpx2.HTTPError | anthropic.APIConnectionError):
            return transport.connection_failure(error, base_url=self.base_url, timeout=self.timeout)
        # an `error` event in the stream: {"type": "error", "error": {"type", "message"}}
        body = error.body if isinstance(error.body, dict) else {}
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = f"the model failed: {detail.get('message') or error.message}"
        if detail.get("type") in RETRIED_ERRORS:
            return Unavailable(message)
        return ModelError(message)


def anthropic_messages(messages):
    """The `system` text and the turns of the Messages API for OpenAI-format chat messages."""
    system, turns, previous = [], [], None
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "system":
            system.append(content)
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": content,
            }
            # The results of one turn's calls go back together, in one user message.
            if previous == "tool":
                turns[-1]["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
        elif role == "assistant":
            blocks = [{"type": "text", "text": content}] if content else []
            for call in message.get("tool_calls") or ():
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": _arguments(call["function"].get("arguments")),
                    }
                )
            if blocks:  # the API refuses an empty turn
                turns.append({"role": "assistant", "content": blocks})
        else:
            turns.append({"role": "user", "content": content})
        previous = role
    return "\n\n".join(system), turns


def anthropic_tools(tools):
    return [
        {
            "name": tool["function"]["name"],
            "description": tool["function"].get("description", ""),
            "input_schema": tool["function"].get("parameters") or {"type": "object"},
        }
        for tool in tools
    ]


def _arguments(text):
    """A tool call's input: the object its JSON arguments hold, or {} for anything else."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
