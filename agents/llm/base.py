"""What every model of language gives the agent loop: a stream of text, tool calls and usage."""

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


class ModelError(Exception):
    """The model could not answer; the message is shown to the user as the run's error."""


class StopSignal:
    """Set when the run must stop. Models wait on it instead of sleeping, and register
    callbacks that abort blocking I/O (closing a socket) so a stop lands within a second."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks = []

    def is_set(self):
        return self._event.is_set()

    def wait(self, timeout):
        return self._event.wait(timeout)

    def set(self):
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback):
        """Call `callback` once when the signal is set (at once if it already is).
        Returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback):
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


class Model:
    """stream() yields TextDelta, ToolCall and Usage items for one model turn.

    `messages` are chat messages in the OpenAI format ({"role", "content", "tool_calls",
    "tool_call_id"}); `tools` are function schemas in the OpenAI format. When `stop` is set
    the model ends its stream early without raising."""

    def stream(self, messages, tools, stop):
        raise NotImplementedError
