"""The `demo` model: deterministic and offline, so the product runs with no key and tests need
no network. Its pace and length come from the agent's config: {"demo": {"words", "delay_ms"}}.

It calls tools when asked in words (calculate, the time) and, to exercise any tool, when the
user's message has lines `/tool <name> <JSON arguments>`: exactly those calls, in one turn,
then a sentence with each result."""

import json
import re
import zlib

from .base import Model, TextDelta, ToolCall, Usage

VOCABULARY = (
    "agents plan work in small steps and report what they find while the stream carries every "
    "word to the page as soon as the worker writes it so nothing waits for the end of the reply "
    "and a reload picks up exactly where the text was"
).split()

# "calculate 2 * (3 + 4)", "compute 7/2", "what is 12^2": the expression after the verb
CALCULATE = re.compile(
    r"\b(?:calculate|compute|evaluate|what is|what's)\b\s*:?\s*([-+*/%^().\d\s]+)"
)
ASKS_TIME = re.compile(r"\b(?:what time|the time|current time|time is it|what's the time)\b")
TOOL_LINE = re.compile(r"^/tool\s+(\S+)[ \t]*(.*)$", re.MULTILINE)


def _words(text):
    return len(text.split())


class DemoModel(Model):
    system = model = "demo"  # the tracing spans' gen_ai.system and gen_ai.request.model

    def __init__(self, words=40, delay_ms=30):
        self.words = max(1, int(words))
        self.delay = max(0, int(delay_ms)) / 1000

    def stream(self, messages, tools, stop, deadline=None):
        available = {tool["function"]["name"] for tool in tools}
        prompt_tokens = sum(_words(m.get("content") or "") for m in messages)
        last = messages[-1]
        calls = self._tool_calls(last, available, len(messages)) if last["role"] == "user" else []
        if calls:
            yield from calls
            yield Usage(prompt_tokens, sum(_words(call.arguments) for call in calls))
            return
        text = self._reply(last, messages)
        written = 0
        for i, word in enumerate(text.split(" ")):
            if stop.wait(self.delay) if self.delay else stop.is_set():
                break
            yield TextDelta(word if i == 0 else " " + word)
            written += 1
        yield Usage(prompt_tokens, written)

    def _tool_calls(self, message, available, turn):
        seed = zlib.crc32(f"{turn}:{message['content']}".encode())
        asked = TOOL_LINE.findall(message["content"])
        if asked:  # whatever the agent may call: the tool path answers for the rest
            return [
                ToolCall(f"call_{seed:08x}_{i}", name, arguments.strip() or "{}")
                for i, (name, arguments) in enumerate(asked)
            ]
        call = self._tool_call(message["content"].lower(), available, seed)
        return [call] if call else []

    def _tool_call(self, text, available, seed):
        match = CALCULATE.search(text)
        if "calculator" in available and match and re.search(r"\d", match.group(1)):
            expression = match.group(1).strip().rstrip("?.")
            return ToolCall(
                f"call_{seed:08x}", "calculator", json.dumps({"expression": expression})
            )
        if "current_time" in available and ASKS_TIME.search(text):
            return ToolCall(f"call_{seed:08x}", "current_time", "{}")
        return None

    def _reply(self, last, messages):
        if last["role"] == "tool":
            answers = []
            for message in reversed(messages):  # the results of the last turn's calls
                if message["role"] != "tool":
                    break
                answers.insert(0, self._answer(message, messages))
            return " ".join(answers)
        # a fixed walk through the vocabulary, seeded by the prompt: same prompt, same reply
        seed = zlib.crc32(last["content"].encode())
        words = []
        for _ in range(self.words):
            seed = (seed * 1103515245 + 12345) % 2**31
            words.append(VOCABULARY[seed % len(VOCABULARY)])
        return " ".join(words).capitalize() + "."

    def _answer(self, result, messages):
        name = self._tool_name(result["tool_call_id"], messages)
        if name == "calculator" and not result["content"].startswith("Error"):
            return f"The answer is {result['content']}."
        return f"The {name} tool answered: {result['content']}"

    @staticmethod
    def _tool_name(call_id, messages):
        for message in messages:
            for call in message.get("tool_calls") or []:
                if call["id"] == call_id:
                    return call["function"]["name"]
        return "tool"
