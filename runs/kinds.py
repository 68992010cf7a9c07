"""The kinds of run. The engine starts, executes, stops and repairs every run the same way; what
differs is what a run of a kind needs beside its Run row and what its loop does. The app that
knows a kind registers it from its AppConfig.ready(), and the engine asks the registry, never
the app, so it imports none of them."""

from .errors import ServiceConflict, ServiceError

_kinds = {}


class Kind:
    """A kind of run: its `name` (the Run's `kind` column) and its `loop`, a runs.loop.RunLoop
    subclass that executes one. The details of a start (an agent, a workflow and its inputs...)
    are the kind's own: `check` vets them before anything is saved, `attach` saves them beside
    the run in the start's transaction, `retry` gives them again for a retry."""

    name = None
    loop = None
    retryable = False  # whether `retry` can start a failed run again (bulk retries pick these)

    def check(self, *, user, thread, **details):
        """Refuse a start (raise a ServiceError) before anything is saved, or return the details
        `attach` will get."""
        return details

    def attach(self, run, *, made_thread, **details):
        """Save what a run of this kind keeps beside its Run (and a new thread beside its
        Thread), in the transaction that saves the run."""

    def keep(self, details):
        """What a follow-up (a start queued on a busy thread) keeps of the checked `details`,
        as JSON, to start with when its turn comes; ServiceError if this kind cannot wait."""
        raise ServiceError(f"A run of kind '{self.name}' cannot be queued.", field="if_busy")

    def restore(self, kept):
        """The details for `check` again, from what `keep` returned."""
        return kept

    def retry(self, run):
        """The details a retry of the failed `run` starts with, or ServiceConflict."""
        raise ServiceConflict(f"A run of kind '{self.name}' cannot be retried.")


def register(kind):
    """Register a Kind instance, once, under its name."""
    if _kinds.get(kind.name, kind) is not kind:
        raise ValueError(f"a run kind named {kind.name!r} is registered already")
    _kinds[kind.name] = kind
    return kind


def retryable():
    """The names of the kinds whose failed runs can be retried."""
    return [name for name, kind in _kinds.items() if kind.retryable]


def get(name):
    """The registered kind `name`; LookupError if no installed app registers it."""
    try:
        return _kinds[name]
    except KeyError:
        raise LookupError(f"no installed app registers runs of kind {name!r}") from None
