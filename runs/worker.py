"""What a worker process shares among the runs it executes: one thread renews the leases of
all of them, polls their stop flags and cuts them off at their time limit, one listens for stop
nudges. Both start with the process's first run."""

import logging
import os
import socket
import threading
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from . import stream
from .models import Run

log = logging.getLogger(__name__)

# The flag poll backs up the pub/sub nudge (lost while Redis reconnects), so a stop lands
# within this long even then.
STOP_POLL_SECONDS = 0.5


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


class Lease:
    """A run this worker holds: its stop signal, its deadline (time.monotonic()), and why the
    worker set the stop, if it did. `lost` means the run is no longer this worker's (the reaper
    ended it while the process was slow): nothing more may be written to it."""

    def __init__(self, worker, run_id, deadline):
        self.run_id = run_id
        self.stop = StopSignal()
        self.deadline = deadline
        self.renewed = time.monotonic()  # when the last renewal that found the run ours began
        self.expired = False
        self.lost = False
        self.handed_back = False  # the worker is shutting down: another one resumes the run
        self._worker = worker

    def release(self):
        self._worker.release(self.run_id)

    def expire(self):
        if not self.stop.is_set():  # a stop asked for before the deadline stays a stop
            self.expired = True
            self.stop.set()

    def lose(self):
        self.lost = True
        self.stop.set()

    def hand_back(self):
        if not self.stop.is_set():  # a stop asked for before the shutdown stays a stop
            self.handed_back = True
            self.stop.set()

    def held(self):
        """Whether the run is still ours to write to. Renewals come every RUN_HEARTBEAT_SECONDS;
        none for half the lease means this process was frozen or the database slow, and the
        reaper may have taken the run meanwhile: ask the database before writing."""
        stale = time.monotonic() - self.renewed > settings.RUN_LEASE_SECONDS / 2
        if stale and not self.lost and not self._worker.renew({self.run_id: self}):
            self.lose()  # cannot tell: writing could come after the reaper's end
        return not self.lost


class Worker:
    def __init__(self):
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._runs = {}  # run id (str) -> Lease
        self._pid = None
        self.shutting_down = False  # it takes no more runs: their messages go back

    def _ensure_started(self):
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own threads
            self.id = f"{socket.gethostname()}:{self._pid}"
        for target in (self._heartbeat, self._listen):
            threading.Thread(target=target, name=f"relay-{target.__name__}", daemon=True).start()

    def hold(self, run_id, deadline):
        """Register a claimed run, to be cut off at `deadline` (time.monotonic()); its Lease."""
        self._ensure_started()
        key = str(run_id)
        lease = Lease(self, key, deadline)
        with self._lock:
            self._runs[key] = lease
        # A nudge sent before we registered is not repeated. Without Redis the heartbeat finds
        # the stop (in the database) all the same; raising here would leave the run claimed,
        # never executed, and its lease renewed for as long as this process lives.
        try:
            if stream.stop_flags([key]):
                lease.stop.set()
        except redis.RedisError as exc:
            log.warning("run %s: cannot read its stop flag: %s", key, exc)
        return lease

    def release(self, run_id):
        with self._lock:
            self._runs.pop(run_id, None)

    def active(self):
        with self._lock:
            return dict(self._runs)

    def hand_back(self):
        """The process is shutting down (a deploy's SIGTERM): stop every run it holds where it
        is, for the loop to enqueue it again (runs.lifecycle.run_hand_back), rather than keep
        the shutdown waiting for them to finish."""
        self.shutting_down = True
        leases = self.active()
        for lease in leases.values():
            lease.hand_back()
        if leases:
            log.warning("shutting down: handing back %d runs", len(leases))

    def _heartbeat(self):
        renewed = time.monotonic()
        while True:
            time.sleep(STOP_POLL_SECONDS)
            leases = self.active()
            if not leases:
                continue
            # before Redis and the database, which may be slow to answer: the time limit holds
            # whatever the model does, even when it says nothing at all
            now = time.monotonic()
            for lease in leases.values():
                if now >= lease.deadline:
                    lease.expire()
            try:
                for run_id in stream.stop_flags(list(leases)):
                    leases[run_id].stop.set()
            except redis.RedisError as exc:
                log.warning("cannot read stop flags: %s", exc)
            if time.monotonic() - renewed >= settings.RUN_HEARTBEAT_SECONDS:
                renewed = time.monotonic()
                self.renew(leases)

    def renew(self, leases):
        """Extend the leases of the runs this worker still holds, stop those it no longer holds,
        and honour stop requests whose Redis flag was lost. False if the database failed."""
        began = time.monotonic()
        expires = timezone.now() + timedelta(seconds=settings.RUN_LEASE_SECONDS)
        try:
            mine = Run.objects.leased_to(self.id).filter(pk__in=list(leases))
            mine.update(lease_expires=expires)
            # After the UPDATE: a run it missed is not ours (the reaper takes only lapsed
            # leases, and these are renewed), or it has just ended by its own hand.
            held = {str(pk): stop for pk, stop in mine.values_list("pk", "stop_requested")}
        except Exception:
            log.exception("cannot renew the leases of %d runs", len(leases))
            return False
        finally:
            connection.close()
        for run_id, lease in leases.items():
            if run_id not in held:
                if not lease.lost:
                    log.warning("run %s: its lease is not ours any more; stopping it", run_id)
                lease.lose()
                continue
            lease.renewed = max(lease.renewed, began)
            if held[run_id] is not None:
                lease.stop.set()
        return True

    def _listen(self):
        while True:
            try:
                pubsub = stream.client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(stream.STOP_CHANNEL)
                while True:
                    # within the socket timeout: a quiet channel is not a lost connection
                    message = pubsub.get_message(timeout=5)
                    lease = message and self.active().get(message["data"])
                    if lease:
                        lease.stop.set()
            except redis.RedisError as exc:
                log.warning("stop listener lost Redis, retrying: %s", exc)
                time.sleep(1)


worker = Worker()
