"""The budget's refusal in the OpenAPI schema: a drf-spectacular postprocessing hook
(SPECTACULAR_SETTINGS), since the operations that start runs are the engine's and its apps',
which do not know of budgets."""

BUDGET_EXCEEDED = (
    "; `budget_exceeded`: your daily token budget is used up (`budget`, `used`, and `resets`:"
    " the next UTC midnight, when it resets; `Retry-After` says the seconds until then)."
)
RETRY_AFTER = {
    "description": "Seconds until you may try again (`budget_exceeded`: until the budget resets).",
    "schema": {"type": "integer"},
}


def document_budget(result, generator, request, public):
    """Every operation that starts a run (its 429 answers the engine's `too_many_runs`) may be
    refused over the budget too (usage.services.budget_check_start)."""
    for path in result["paths"].values():
        for operation in path.values():
            refused = operation.get("responses", {}).get("429", {})
            if "`too_many_runs`" in refused.get("description", ""):
                refused["description"] = refused["description"].rstrip(".") + BUDGET_EXCEEDED
                refused.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
    return result
