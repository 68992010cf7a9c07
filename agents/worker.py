"""What a worker process shares among the runs it executes: one thread renews the leases of
all of them and polls their stop flags, one listens for stop nudges. Both start with the
process's first run."""

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


class Worker:
    def __init__(self):
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._runs = {}  # run id (str) -> StopSignal
        self._pid = None

    def _ensure_started(self):
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own threads
            self.id = f"{socket.gethostname()}:{self._pid}"
        for target in (self._heartbeat, self._listen):
            threading.Thread(target=target, name=f"relay-{target.__name__}", daemon=True).start()

    def hold(self, run_id, stop):
        """Register a claimed run; returns the function that releases it."""
        self._ensure_started()
        key = str(run_id)
        with self._lock:
            self._runs[key] = stop
        # A nudge sent before we registered is not repeated. Without Redis the heartbeat finds
        # the stop (in the database) all the same; raising here would leave the run claimed,
        # never executed, and its lease renewed for as long as this process lives.
        try:
            if stream.stop_flags([key]):
                stop.set()
        except redis.RedisError as exc:
            log.warning("run %s: cannot read its stop flag: %s", key, exc)

        def release():
            with self._lock:
                self._runs.pop(key, None)

        return release

    def active(self):
        with self._lock:
            return dict(self._runs)

    def _heartbeat(self):
        renewed = time.monotonic()
        while True:
            time.sleep(STOP_POLL_SECONDS)
            runs = self.active()
            if not runs:
                continue
            try:
                for run_id in stream.stop_flags(list(runs)):
                    runs[run_id].set()
            except redis.RedisError as exc:
                log.warning("cannot read stop flags: %s", exc)
            if time.monotonic() - renewed >= settings.RUN_HEARTBEAT_SECONDS:
                renewed = time.monotonic()
                self._renew(runs)

    def _renew(self, runs):
        """Extend the leases, and honour stop requests whose Redis flag was lost."""
        expires = timezone.now() + timedelta(seconds=settings.RUN_LEASE_SECONDS)
        try:
            mine = Run.objects.filter(
                pk__in=list(runs), status=Run.Status.RUNNING, lease_owner=self.id
            )
            mine.update(lease_expires=expires)
            for run_id in mine.filter(stop_requested__isnull=False).values_list("pk", flat=True):
                runs[str(run_id)].set()
        except Exception:
            log.exception("cannot renew the leases of %d runs", len(runs))
        finally:
            connection.close()

    def _listen(self):
        while True:
            try:
                pubsub = stream.client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(stream.STOP_CHANNEL)
                while True:
                    # within the socket timeout: a quiet channel is not a lost connection
                    message = pubsub.get_message(timeout=5)
                    stop = message and self.active().get(message["data"])
                    if stop:
                        stop.set()
            except redis.RedisError as exc:
                log.warning("stop listener lost Redis, retrying: %s", exc)
                time.sleep(1)


worker = Worker()
