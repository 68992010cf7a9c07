"""OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, OpenRouter) on the `openai` SDK."""

import httpx2
import openai

from . import transport
from .base import ModelError, TextDelta, ToolCall, Usage


class OpenAIChatModel(transport.RemoteModel):
    system = "openai"  # the tracing spans' gen_ai.system

    def _call(self, messages, tools, stop):
        if stop.is_set():
            return
        http = self.http_client(stop)
        client = openai.OpenAI(
            base_url=self.base_url,
            # The SDK wants a key; an empty one means none: the header is left out below.
            api_key=self.api_key or "none",
            timeout=http.timeout,
            max_retries=0,  # every retry is ours, and announced
            default_headers=self.headers,
            http_client=http,
        )
        options = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        options = {name: value for name, value in options.items() if value is not None}
        if tools:
            options["tools"] = tools
        try:
            with http, client:
                chunks = client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers={} if self.api_key else {"Authorization": openai.omit},
                    **options,
                )
                yield from self._items(chunks, stop)
        except (openai.APIError, httpx2.HTTPError) as e:
            if stop.is_set():
                return  # our own shutdown broke the call: the run was stopped
            raise self._failure(e) from e

    def _items(self, chunks, stop):
        calls = {}  # index -> {"id", "name", "arguments"}, as the deltas build them up
        for chunk in chunks:
            if chunk.usage:
                yield Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
            # We ask for one choice; only the first one counts.
            for choice in (chunk.choices or [])[:1]:
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    yield TextDelta(delta.content)
                for part in delta.tool_calls or ():
                    _add_tool_call_delta(calls, part)
        # A stop ends the stream early (our shutdown reads as its end): any tool call seen so
        # far may be cut short, so none is worth running.
        if stop.is_set():
            return
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")

    def _failure(self, error):
        if isinstance(error, openai.APIStatusError):
            return transport.status_failure(error.response)
        if isinstance(error, openai.APIConnectionError):
            error = error.__cause__ or error
        if isinstance(error, httpx2.HTTPError | openai.APIConnectionError):
            return transport.connection_failure(error, base_url=self.base_url, timeout=self.timeout)
        # an `error` chunk in the stream
        return ModelError(f"the model failed: {error.message}")


def _add_tool_call_delta(calls, part):
    index = getattr(part, "index", None)
    call_id = getattr(part, "id", None)
    if index is None:
        # Some servers leave out `index`; a new id then starts a new call.
        known_ids = {call["id"] for call in calls.values()}
        index = len(calls) if not calls or (call_id and call_id not in known_ids) else max(calls)
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    function = getattr(part, "function", None)
    # id and name come whole (some servers repeat them); only arguments arrive in pieces.
    call["id"] = call_id or call["id"]
    call["name"] = getattr(function, "name", None) or call["name"]
    call["arguments"] += getattr(function, "arguments", None) or ""
