"""A local fake of Anthropic's Messages endpoint (POST /v1/messages): the server of
tests/fakellm.py, speaking the Messages API's stream events and error shapes."""

from tests.fakellm import FakeLLM


def message(*blocks, input_tokens=10, output_tokens=5, stop_reason="end_turn"):
    """The events of one streamed message whose content blocks are `blocks` (lists of events)."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-fake",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    events = [("message_start", start), ping()]
    for block in blocks:
        events.extend(block)
    return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]


def text_block(index, *pieces):
    return [
        _block_start(index, {"type": "text", "text": ""}),
        *(_delta(index, {"type": "text_delta", "text": piece}) for piece in pieces),
        _block_stop(index),
    ]


def tool_use_block(index, call_id, name, arguments, pieces=3):
    """A tool_use block whose input (JSON text) comes in `pieces` input_json_delta events."""
    size = max(1, -(-len(arguments) // pieces))
    parts = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    start = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
    return [
        _block_start(index, start),
        *(_delta(index, {"type": "input_json_delta", "partial_json": part}) for part in parts),
        _block_stop(index),
    ]


def ping():
    return ("ping", {"type": "ping"})


def error_body(error_type, message):
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_event(error_type, message):
    return ("error", error_body(error_type, message))


def _block_start(index, block):
    return ("content_block_start", {"type": "content_block_start", "index": index,
                                    "content_block": block})  # fmt: skip


def _delta(index, delta):
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index):
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


class FakeAnthropic(FakeLLM):
    def __init__(self):
        super().__init__()
        self.base_url = self.origin  # the SDK adds /v1/messages

    def script(self, events=(), **options):
        options.setdefault("done", False)  # the Messages API ends with message_stop
        super().script(events, **options)

    def reply(self, *blocks, input_tokens=10, output_tokens=5, **options):
        """Queue a whole message of `blocks`."""
        events = message(*blocks, input_tokens=input_tokens, output_tokens=output_tokens)
        self.script(events, **options)

    def fail(self, status, message, error_type="overloaded_error", headers=None):
        self.script(status=status, body=error_body(error_type, message), headers=headers)

    def unscripted(self):
        return error_body("api_error", "FakeAnthropic: no reply scripted")
