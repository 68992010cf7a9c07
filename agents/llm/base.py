"""What every model of language gives the agent loop: a stream of text, tool calls and usage."""

from dataclasses import dataclass

from runs.loop import RunFailed
from runs.worker import StopSignal  # noqa: F401  (what a model's stream() is given)


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


@dataclass(frozen=True)
class Retrying:
    """The call failed before any output and is tried again after `delay` seconds."""

    attempt: int  # 1 for the first retry
    delay: float
    reason: str


class ModelError(RunFailed):
    """The model could not answer; the message is shown to the user as the run's error."""


class Model:
    """stream() yields TextDelta, ToolCall, Usage and Retrying items for one model turn.

    `messages` are chat messages in the OpenAI format ({"role", "content", "tool_calls",
    "tool_call_id"}); `tools` are function schemas in the OpenAI format. When `stop` is set
    the model ends its stream early without raising. `deadline` (time.monotonic()) is the
    run's: no retry waits past it."""

    system = "unknown"  # who serves it, for tracing (gen_ai.system): "openai", "anthropic"
    model = "unknown"  # the model's name

    def stream(self, messages, tools, stop, deadline=None):
        raise NotImplementedError
