"""Fault: many SSE clients drop their connections at random moments of live runs and reconnect
with Last-Event-ID, as browsers on a bad network do."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agents import services

from conftest import at_scale, bearer, new_thread
from sse import assert_transcript, follow_resuming

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CLIENTS = at_scale(100, 1000)
PER_RUN = 10
# runs per user: their clients stay well under SSE_MAX_STREAMS_PER_USER, even while a dropped
# connection's slot is not yet freed when its client reconnects
PER_USER = 2
DROP = 0.1  # the chance that a client drops its connection after an event


def random_drops(seed, drops):
    rng = random.Random(seed)

    def drop(event):
        dropped = rng.random() < DROP
        if dropped:
            drops.append(event.number)
        return dropped

    return drop


def test_clients_dropping_at_random_get_every_event_once(live, django_user_model):
    users = [
        django_user_model.objects.create_user(f"user{i}", password="a-password")
        for i in range(CLIENTS // PER_RUN // PER_USER)
    ]
    runs, headers = [], {}
    for user in users:
        auth = bearer(user)
        for _ in range(PER_USER):
            thread = new_thread(user, words=60, delay_ms=20)
            runs.append(services.agent_start(user=user, thread=thread, message="Go on").pk)
            headers[runs[-1]] = auth
    drops = []
    deadline = time.monotonic() + at_scale(60, 300)  # about 4 s and 40 s here
    # one connection pool for all: an httpx client each would cost more than the test
    http = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))

    def client(seed, run):
        return follow_resuming(
            live.base_url, run, headers[run], deadline, random_drops(seed, drops), http
        )

    followed = runs * PER_RUN
    with http, ThreadPoolExecutor(CLIENTS) as pool:
        for run, events in zip(followed, pool.map(client, range(CLIENTS), followed), strict=True):
            assert_transcript(events, run)
    print(
        f"{CLIENTS} clients of {len(runs)} runs of {len(users)} users:"
        f" {len(drops)} dropped connections"
    )
