"""Workflow definitions the tests share."""

# a tool step, a condition that guards one step, an agent step that uses the tool's output
THREE_STEPS = {
    "inputs": [
        {"name": "a", "type": "number", "required": True},
        {"name": "topic", "type": "string", "default": "numbers"},
    ],
    "steps": [
        {"id": "sum", "type": "tool", "tool": "calculator",
         "arguments": {"expression": "{{ inputs.a }} + 2"}},
        {"id": "big", "type": "condition", "when": {"gt": ["{{ steps.sum.output }}", 100]},
         "guards": ["shout"]},
        {"id": "shout", "type": "agent", "prompt": "Shout {{ steps.sum.output }}"},
        {"id": "explain", "type": "agent",
         "prompt": "Explain {{ steps.sum.output }} in terms of {{ inputs.topic }}"},
    ],
}  # fmt: skip
