"""Models of language: the offline `demo` model and OpenAI-compatible endpoints."""

from django.conf import settings

from .base import Model, ModelError, Retrying, StopSignal, TextDelta, ToolCall, Usage

__all__ = [
    "Model",
    "ModelError",
    "Retrying",
    "StopSignal",
    "TextDelta",
    "ToolCall",
    "Usage",
    "get_model",
]


def get_model(agent):
    if agent.model == "demo":
        from .demo import DemoModel

        return DemoModel(**agent.config.get("demo", {}))
    from .openai import OpenAIChatModel

    return OpenAIChatModel(
        base_url=settings.LLM_BASE_URL,
        api_key=settings.LLM_API_KEY,
        model=agent.model,
        timeout=settings.LLM_TIMEOUT,
    )
