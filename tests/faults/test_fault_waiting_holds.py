"""Measurement: what runs waiting for a person hold in the worker process that parked them:
no thread and no database connection, however many wait (here far more than the worker has
threads)."""

import threading
import time

import psutil
import pytest
from django.db import connection

from runs.models import Run

from conftest import at_scale, bearer, new_thread, start, start_live, wait_for

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(at_scale(180, 600)),  # the large counts take minutes, not hours
]

RUNS = at_scale(20, 200)
CONCURRENCY = 10  # the worker's threads: every run waits on one of these first
APPLICATION = "relay-test-worker"  # the worker's connections, as PostgreSQL names them
CALC = '/tool calculator {"expression": "6*7"}'


def connections_of(process):
    """The worker's connections to the database, counted twice: by the application name its
    libpq gives them (PGAPPNAME), and by the client ports of its own TCP sockets (read before
    and after the query, for the connections opened or closed meanwhile)."""

    def ports():
        return {c.laddr.port for c in process.net_connections("tcp") if c.raddr}

    before = ports()
    with connection.cursor() as cursor:
        cursor.execute(
            "select application_name, client_port from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )
        rows = cursor.fetchall()
    theirs = before | ports()
    return sum(name == APPLICATION for name, _ in rows), sum(port in theirs for _, port in rows)


def connections_held(process):
    """What the worker holds once it is quiet: both counts agree."""
    named, by_port = settled(lambda: connections_of(process))
    assert named == by_port, f"{named} connections named the worker's, {by_port} on its ports"
    return named


def settled(measure):
    """`measure()` once two readings half a second apart agree."""
    value = measure()
    while (again := (time.sleep(0.5), measure())[1]) != value:
        value = again
    return value


@pytest.mark.parametrize("pool", [0, 4], ids=["no-pool", "pool-4"])
def test_waiting_runs_hold_no_thread_and_no_connection_of_their_worker(
    own_redis, tmp_path, alice, bob, pool
):
    processes = start_live(
        tmp_path,
        REDIS_URL=own_redis.url,
        RUN_MAX_ACTIVE_PER_USER=str(RUNS + CONCURRENCY),
        WORKER_CONCURRENCY=str(CONCURRENCY),
        DB_POOL_SIZE=str(pool),
        worker_env={"PGAPPNAME": APPLICATION},
    )
    try:
        worker = psutil.Process(processes.processes["worker"].pid)
        headers = {alice.pk: bearer(alice), bob.pk: bearer(bob)}
        # Warm the worker up: its pool starts a thread only when a task finds none idle, and
        # the heartbeat and stop listener start with the first run. Bob's runs, a second
        # each, all running at once fill the pool; then it is idle.
        warm = [start(processes, headers[bob.pk], new_thread(bob, words=20, delay_ms=100))
                for _ in range(CONCURRENCY)]  # fmt: skip
        running = Run.objects.filter(pk__in=warm, status=Run.Status.RUNNING)
        wait_for(lambda: running.count() == CONCURRENCY, message="the pool to be busy")
        ended = Run.objects.filter(pk__in=warm, status__in=Run.TERMINAL)
        wait_for(lambda: ended.count() == CONCURRENCY, message="the warm-up runs to end")
        idle_threads = settled(worker.num_threads)
        idle_connections = connections_held(worker)

        peak, parking = [0], threading.Event()

        def watch():  # the count sees the worker's connections while it works
            try:
                while not parking.is_set():
                    peak[0] = max(peak[0], connections_of(worker)[0])
            finally:
                connection.close()

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        try:
            parked = [
                start(processes, headers[alice.pk],
                      new_thread(alice, tools=["calculator"], approve_tools=["calculator"]), CALC)
                for _ in range(RUNS)
            ]  # fmt: skip
            waiting = Run.objects.filter(pk__in=parked, status=Run.Status.WAITING)
            wait_for(lambda: waiting.count() == RUNS, timeout=at_scale(30, 120),
                     message="every run to wait")  # fmt: skip
        finally:
            parking.set()
            watcher.join(10)
        took = time.monotonic() - started
        threads_at_once = worker.num_threads()
        threads = settled(worker.num_threads)
        connections = connections_held(worker)
    finally:
        processes.stop_all()
    print(
        f"{RUNS} runs waiting on one worker ({CONCURRENCY} threads, DB_POOL_SIZE={pool}),"
        f" parked in {took:.1f} s: threads {idle_threads} idle, {threads_at_once} once all"
        f" waited, {threads} settled; database connections {idle_connections} idle,"
        f" {connections} once all waited (peak {peak[0]} while parking)"
    )
    assert peak[0] > 0, "the count never saw a connection of the worker's"
    assert threads_at_once - idle_threads == 0
    assert threads - idle_threads == 0
    if pool:  # the pool keeps what it opened, within its size, for whoever comes next
        assert connections <= pool
    else:
        assert connections == 0
