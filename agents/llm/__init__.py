"""Models of language: the offline `demo` model, OpenAI-compatible endpoints and Anthropic."""

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
    "make_model",
]

KINDS = ("openai", "anthropic")


def get_model(agent):
    """The agent's model: on its provider, or on the default one the LLM_* settings describe
    (set by the operator, so it may be at a private address; a user's provider may not, unless
    PROVIDERS_ALLOW_PRIVATE)."""
    provider = agent.provider
    if agent.model == "demo":
        from .demo import DemoModel

        return DemoModel(**agent.config.get("demo", {}))
    options = {"temperature": agent.temperature, "max_tokens": agent.max_tokens}
    if provider is None:
        return make_model(
            "openai",
            base_url=settings.LLM_BASE_URL,
            api_key=settings.LLM_API_KEY,
            model=agent.model or settings.LLM_MODEL,
            **options,
        )
    model = agent.model or provider.default_model
    if not model:
        raise ModelError(f"the agent names no model, and its provider {provider} has no default")
    return make_model(
        provider.kind,
        base_url=provider.base_url,
        api_key=provider.api_key,
        model=model,
        headers=provider.headers,
        allow_private=settings.PROVIDERS_ALLOW_PRIVATE,
        **options,
    )


def make_model(
    kind,
    *,
    base_url,
    api_key,
    model,
    headers=None,
    temperature=None,
    max_tokens=None,
    timeout=None,
    allow_private=True,
):
    """A client of `model` at a provider of `kind`, "openai" (any compatible endpoint) or
    "anthropic"."""
    # here, not at the top: the SDKs load only in a process that calls a real model
    from .anthropic import AnthropicModel
    from .openai import OpenAIChatModel

    classes = {"openai": OpenAIChatModel, "anthropic": AnthropicModel}
    if kind not in classes:
        raise ValueError(f"a provider's kind is one of {', '.join(KINDS)}, not {kind!r}")
    return classes[kind](
        base_url=base_url,
        api_key=api_key,
        model=model,
        timeout=settings.LLM_TIMEOUT if timeout is None else timeout,
        headers=headers,
        temperature=temperature,
        max_tokens=max_tokens,
        allow_private=allow_private,
    )
