"""What a worker does with every run, whatever its kind: claim it, hand it to its kind's loop,
and end it with one terminal status. RunLoop is the loop's base class: the time limit, stop,
usage, and that one status; a kind's loop writes `body()`.

A run spends its life waiting (on a model, a tool), so it holds no database connection while
it waits: every database step goes through `closing_connection()`, which closes the connection
after it."""

import contextlib
import logging
import time

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from django.db.models import Q

from . import kinds, signals, stream
from .errors import ServiceError
from .lifecycle import run_claim, run_finish, run_hand_back, run_wait
from .models import Run
from .worker import worker

log = logging.getLogger(__name__)


def storable_text(text):
    """Text from a model or a tool, with its NUL characters replaced: PostgreSQL refuses them."""
    return text.replace("\x00", "\ufffd") if text else text


class Stopped(Exception):
    pass


class RunFailed(Exception):
    pass


class Waiting(Exception):
    """The run asked a person something (its InputRequest rows are saved): it waits for the
    answer holding no worker, and an answer enqueues it again."""


@contextlib.contextmanager
def closing_connection():
    try:
        yield
    finally:
        connection.close()


def execute(run_id):
    with closing_connection():
        run = run_claim(run_id=run_id, worker=worker.id)
    if run is None:
        return
    try:
        loop = kinds.get(run.kind).loop
    except LookupError as exc:  # the app that knew the kind is no longer installed
        with closing_connection():
            run_finish(run=run, status=Run.Status.FAILED, error=str(exc))
        return
    lease = worker.hold(run.pk, time.monotonic() + settings.RUN_TIME_LIMIT)
    stream.await_first_event(run)
    try:
        loop(run, lease).execute()
    finally:
        stream.forget_first_event(run.pk)
        lease.release()


class RunLoop:
    """What every run does around its body: the time limit, stop, usage, and one terminal
    status. A kind's loop writes `body()`, raising Stopped when `stop` is set and RunFailed
    (with the reason) when the run cannot go on.

    The worker holds the run's `lease`: it sets `stop` at the deadline (so a model that says
    nothing is cut off too), and when the run turns out not to be ours any more, after which
    the loop writes nothing (`lease.held()`)."""

    def __init__(self, run, lease):
        self.run = run
        self.thread = run.thread
        self.lease = lease
        self.stop = lease.stop
        self.deadline = lease.deadline
        self.input_tokens = 0
        self.output_tokens = 0

    def body(self):
        raise NotImplementedError

    def execute(self):
        status, error = Run.Status.COMPLETED, ""
        try:
            self.body()
        except Waiting:
            if self._wait():
                return
            status = Run.Status.STOPPED  # a stop came before the wait
        except Stopped:
            if self.lease.handed_back and self._hand_back():
                return
            if self.lease.expired:  # the worker cut the run off at its deadline
                status, error = Run.Status.FAILED, self._over_time()
            else:
                status = Run.Status.STOPPED
        except RunFailed as exc:
            status, error = Run.Status.FAILED, str(exc)
        except SoftTimeLimitExceeded:  # Celery's limit, under the prefork pool
            status, error = Run.Status.FAILED, self._over_time()
        except Exception as exc:
            log.exception("run %s failed", self.run.pk)
            status, error = Run.Status.FAILED, f"internal error: {type(exc).__name__}: {exc}"
        if not self.lease.held():
            log.warning("run %s: lost its lease; whoever took it ends it", self.run.pk)
            return
        self._announce_usage()
        with closing_connection():
            run_finish(
                run=self.run,
                status=status,
                error=error,
                # this attempt, while its worker holds it: not once the reaper took it back
                where=Q(attempt=self.run.attempt, lease_owner=self.run.lease_owner),
                usage=(self.input_tokens, self.output_tokens),
            )

    def _hand_back(self):
        """The worker is shutting down: enqueue the run again for another (False when a stop
        came meanwhile: it then ends stopped)."""
        if not self.lease.held():
            return True
        with closing_connection():
            handed = run_hand_back(run=self.run, usage=(self.input_tokens, self.output_tokens))
        if handed:
            self._announce_usage()
        return handed

    def _wait(self):
        """Park the run; False when a stop came first (the run then ends stopped)."""
        if not self.lease.held():
            return True  # the run is someone else's now: they end it
        with closing_connection():
            waiting = run_wait(run=self.run, usage=(self.input_tokens, self.output_tokens))
        if waiting:
            self._announce_usage()
        return waiting

    def _announce_usage(self):
        if self.input_tokens or self.output_tokens:
            stream.emit(
                self.run.pk,
                "usage",
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
            )

    def turn_ended(self):
        """A model turn ended and the run goes on: the integrations may end it instead
        (runs.signals.run_turn_ended; a daily token budget used up), as RunFailed."""
        try:
            with closing_connection():
                signals.run_turn_ended.send(
                    Run, run=self.run, input_tokens=self.input_tokens,
                    output_tokens=self.output_tokens,
                )  # fmt: skip
        except ServiceError as exc:
            raise RunFailed(exc.message) from exc

    def _check(self):
        if self.stop.is_set():
            raise Stopped
        if time.monotonic() > self.deadline:
            raise RunFailed(self._over_time())

    def _over_time(self):
        return f"the run took longer than its time limit ({settings.RUN_TIME_LIMIT} s)"
