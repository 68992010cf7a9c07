"""Fan-out: N SSE clients, each following a run, and what the web process pays for them.

For each N, a fresh web process (uvicorn) and N asyncio clients, --per-run to a run. A
publisher process appends message.delta events to every run's log with the worker's own code
(runs.stream.emit), each run every --interval seconds, staggered, each delta's text being the
moment of its append. Latency is the client's receipt minus that moment. Beside the clients,
in the same run, an asyncio Redis client subscribed to the same pub/sub channel the web process
listens on is the floor: the events straight from Redis.

Reported for each N: latency p50 and p99 (and the floor's, and the ratios), deliveries per
second, the web process's memory (RSS) and threads per open stream, its Redis connections, and
the database connections it holds while the streams are open.

    .venv/bin/python bench/fanout.py [--clients 100 500 1000 2000] [--seconds 20]
"""

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from urllib.parse import urlsplit

import psutil
import redis.asyncio

from client import Stream
from setup import percentile, prepare


class Follower:
    """What one client received: the deltas' ids, and their latencies."""

    def __init__(self):
        self.ids, self.latencies = [], []

    def __call__(self, event_id, event_type, data, received_at):
        if event_type == "message.delta":
            self.ids.append(event_id)
            self.latencies.append(received_at - float(json.loads(data)["text"]))
        return event_type == "run.status" and '"completed"' in data


async def floor(url, channels, latencies, ready):
    """The same events straight from Redis: django-eventstream's pub/sub channel."""
    client = redis.asyncio.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe("events_channel")
        ready.set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            now = time.time()
            if message is None:
                continue
            item = json.loads(message["data"])
            if item["channel"] not in channels:
                continue
            data = json.loads(item["data"])
            if item["event_type"] == "message.delta":
                latencies.append(now - float(data["text"]))
            elif data.get("status") == "completed":
                channels.discard(item["channel"])
                if not channels:
                    return


def publish(run_ids, interval, seconds):
    """The worker's side: every run appends a delta each `interval`, staggered, then ends."""
    from runs import stream

    stream.client.cache_clear()  # a forked process makes its own connections
    slots = sorted((interval * i / len(run_ids), run_id) for i, run_id in enumerate(run_ids))
    start = time.monotonic() + 0.5
    rounds = int(seconds / interval)
    for n in range(rounds):
        for offset, run_id in slots:
            delay = start + n * interval + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stream.emit(run_id, "message.delta", message=1, text=f"{time.time():.6f}")
    for run_id in run_ids:
        stream.emit(run_id, "run.status", status="completed", error="")


def connections(pid, port):
    return sum(
        1 for c in psutil.Process(pid).net_connections("tcp") if c.raddr and c.raddr.port == port
    )


def database_handles(pid):
    """Connections (PostgreSQL) or open files (SQLite) the web process holds to the database."""
    from django.db import connection

    if connection.vendor == "sqlite":
        return sum(
            1
            for f in psutil.Process(pid).open_files()
            if f.path.startswith(connection.settings_dict["NAME"])
        )
    return connections(pid, int(connection.settings_dict["PORT"] or 5432))


def footprint(pid):
    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_threads()


def make_runs(user, count):
    """Running runs whose logs begin as a run's does, with its queued status: event 1, so the
    deltas are events 2, 3, ... (a log begun otherwise numbers its events from the Redis clock)."""
    from runs import stream
    from runs.models import Run, Thread

    runs = []
    for _ in range(count):
        thread = Thread.objects.create(owner=user)
        run = Run.objects.create(owner=user, thread=thread, kind="agent", status="running")
        stream.emit(run.pk, "run.status", status="queued", error="")
        runs.append(run.pk)
    return runs


def proxy_rss(proxy):
    return sum(psutil.Process(pid).memory_info().rss for pid in proxy.pids()) if proxy else 0


async def fan_out(n, runs, args, headers, live, proxy):
    web = live.processes["web"].pid
    address = "127.0.0.1", proxy.port if proxy else live.port

    # warm up the process (imports, the pub/sub listener) with a stream that opens and ends
    warm = Stream(address, f"/api/runs/{runs[0]}/events/", headers, Follower())
    task = asyncio.create_task(warm.run())
    await warm.opened
    task.cancel()
    await asyncio.sleep(1)
    idle_rss, idle_threads = footprint(web)
    idle_proxy = proxy_rss(proxy)

    followers = [Follower() for _ in range(n)]
    clients = [
        Stream(address, f"/api/runs/{runs[i % len(runs)]}/events/", headers, followers[i])
        for i in range(n)
    ]
    tasks = []
    for i in range(0, n, 100):  # connect in waves, as a crowd of browsers would
        batch = clients[i : i + 100]
        tasks += [asyncio.create_task(c.run()) for c in batch]
        await asyncio.gather(*(c.opened for c in batch))
    opened = sum(c.opened.result() for c in clients)
    await asyncio.sleep(1)
    rss, threads = footprint(web)
    redis_port = urlsplit(live.env["REDIS_URL"]).port or 6379
    held = {"redis": connections(web, redis_port), "database": database_handles(web)}
    proxy_kb = (proxy_rss(proxy) - idle_proxy) / 1024 / n
    if proxy:
        # Pushpin asks the web process once for each newly subscribed channel, ten a second,
        # and holds that channel's publishes until it has the answer: let that settle first.
        await asyncio.sleep(2 + len(runs) / 10)

    floor_latencies, ready = [], asyncio.Event()
    floor_task = asyncio.create_task(
        floor(live.env["REDIS_URL"], {f"run-{r}" for r in runs}, floor_latencies, ready)
    )
    await ready.wait()
    publisher = multiprocessing.get_context("fork").Process(
        target=publish, args=([str(r) for r in runs], args.interval, args.seconds)
    )
    started = time.monotonic()
    publisher.start()
    peak_rss = rss
    while publisher.is_alive():
        await asyncio.sleep(0.5)
        peak_rss = max(peak_rss, footprint(web)[0])
    await asyncio.wait_for(asyncio.gather(*tasks, floor_task), timeout=60)
    elapsed = time.monotonic() - started

    latencies = [x * 1000 for f in followers for x in f.latencies]
    floor_ms = [x * 1000 for x in floor_latencies]
    expected = list(range(2, int(args.seconds / args.interval) + 2))  # after the queued status
    intact = sum(f.ids == expected for f in followers)
    broken = [  # what the others got wrong, for a few of them
        {
            "missing": sorted(set(expected) - set(f.ids)),
            "repeated": sorted({i for i in f.ids if f.ids.count(i) > 1}),
            "out_of_order": f.ids != sorted(f.ids),
        }
        for f in followers
        if f.ids != expected
    ][:3]
    return {
        "via": "pushpin" if proxy else "direct",
        "clients": n,
        "runs": len(runs),
        "opened": opened,
        "intact": intact,
        "broken": broken,
        "errors": sorted({repr(c.error) for c in clients if c.error})[:3],
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "floor_p50": statistics.median(floor_ms),
        "floor_p99": percentile(floor_ms, 99),
        "deliveries_per_s": len(latencies) / elapsed,
        "kb_per_stream": (rss - idle_rss) / 1024 / n,
        "peak_kb_per_stream": (peak_rss - idle_rss) / 1024 / n,
        "threads_per_stream": (threads - idle_threads) / n,
        "idle_mb": idle_rss / 2**20,
        "proxy_kb_per_stream": proxy_kb,
        **held,
    }


def measure(n, via, args, user, headers, live):
    """One row: a fresh web process (and Pushpin in front of it), n clients."""
    from django.conf import settings

    from runs.models import Run

    from pushpin import Pushpin

    runs = make_runs(user, max(1, n // args.per_run))
    proxy = None
    if via == "pushpin":
        proxy = Pushpin(live.logs / "pushpin", [live.port], debug=False, maxconn=n + 1000,
                        message_hwm=200_000, message_wait=1000)  # fmt: skip
        proxy.start()
    live.env["GRIP_URL"] = settings.GRIP_URL = proxy.grip_url if proxy else ""
    live.start_web()
    try:
        return asyncio.run(fan_out(n, runs, args, headers, live, proxy))
    finally:
        live.stop("web")
        if proxy:
            proxy.stop()
        Run.objects.filter(pk__in=runs).update(status="completed")


def main():

    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500, 1000, 2000])
    parser.add_argument("--per-run", type=int, default=10, help="clients following each run")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between a run's events"
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--via", nargs="+", choices=["direct", "pushpin"], default=["direct"],
        help="clients connect to the web process, or to Pushpin in front of it (GRIP mode)",
    )  # fmt: skip
    args = parser.parse_args()
    user, headers, live = prepare()
    rows = []
    try:
        for n in args.clients:
            for via in args.via:
                rows.append(measure(n, via, args, user, headers, live))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        live.stop_all()
    print()
    print(
        "| via | clients | p50 ms | p99 ms | floor p50 / p99 ms | ratio p50 / p99 | deliveries/s "
        "| web KB/stream | Pushpin KB/stream | threads/stream | Redis conns | DB conns | intact |"
    )
    print("|" + " --- |" * 13)
    for r in rows:
        print(
            f"| {r['via']} | {r['clients']} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['floor_p50']:.1f} / {r['floor_p99']:.1f} "
            f"| {r['p50'] / r['floor_p50']:.1f} / {r['p99'] / r['floor_p99']:.1f} "
            f"| {r['deliveries_per_s']:.0f} | {r['kb_per_stream']:.0f} "
            f"| {r['proxy_kb_per_stream']:.0f} "
            f"| {r['threads_per_stream']:.2f} | {r['redis']} | {r['database']} "
            f"| {r['intact']}/{r['clients']} |"
        )


if __name__ == "__main__":
    main()
