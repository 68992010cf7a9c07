"""Run overhead and stop latency, end to end, as API clients see them.

Throughput: --clients clients at once, each in a loop: POST a run (demo model, zero delay,
--words words) and follow its stream to the terminal event. Reported: runs per second, and the
time from the POST to the first event and to the terminal event at the client (p50, p99); with
one worker process, then two (--workers). The clients are asyncio on raw sockets (bench/client.py)
so that they cost the machine little next to what they measure.

Stop: runs whose demo model writes for a minute; once a client has the first delta it POSTs
stop, and the clock runs from that POST to the terminal event at the client (p50, p99).

    .venv/bin/python bench/runs.py [--seconds 20] [--clients 16] [--workers 1 2] [--stops 100]

Integrations (--integrations N): N rounds, each measuring throughput (one web, one worker) with
metrics and webhooks off (METRICS_ENABLED=0, no endpoint), then on (metrics recorded, every run's
end delivered as a signed webhook to a receiver on loopback, by a webhooks worker of its own);
the medians of both and their ratio, side by side in one run.
"""

import argparse
import asyncio
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil

from client import Stream, request
from setup import percentile, prepare


async def one_run(address, headers, thread_id, stop=False):
    """Start a run and follow it to its end. The times (s) from the POST to the first event and
    to the terminal event; with `stop`, also from the stop request to the terminal event."""
    marks = {}
    started = time.time()
    status, body = await request(
        address, "POST", f"/api/threads/{thread_id}/runs/", headers, {"message": "Hi"}
    )
    assert status == 202, (status, body)
    run = f"/api/runs/{body['id']}"
    stopping = []

    def on_event(event_id, event_type, data, received_at):
        marks.setdefault("first", received_at - started)
        if stop and event_type == "message.delta" and not stopping:
            marks["stop"] = time.time()
            stopping.append(asyncio.create_task(request(address, "POST", f"{run}/stop/", headers)))
        if event_type == "run.status" and '"running"' not in data and '"queued"' not in data:
            marks["end"] = received_at - started
            marks["status"] = data
            return True
        return False

    stream = Stream(address, f"{run}/events/", headers, on_event)
    await stream.run()
    assert stream.error is None and "end" in marks, (stream.error, marks)
    if stop:
        assert '"stopped"' in marks["status"], marks["status"]
        marks["stopped"] = marks["end"] + started - marks["stop"]
        await stopping[0]
    else:
        assert '"completed"' in marks["status"], marks["status"]
    return marks


async def throughput(address, headers, threads, clients, seconds):
    deadline = time.monotonic() + seconds
    queue = iter(threads)

    async def client():
        marks = []
        while time.monotonic() < deadline:
            marks.append(await one_run(address, headers, next(queue)))
        return marks

    started = time.monotonic()
    results = [m for ms in await asyncio.gather(*(client() for _ in range(clients))) for m in ms]
    return len(results) / (time.monotonic() - started), results


async def stops(address, headers, threads, clients):
    pending = iter(threads)

    async def client():
        return [await one_run(address, headers, thread, stop=True) for thread in pending]

    return [m for ms in await asyncio.gather(*(client() for _ in range(clients))) for m in ms]


def cpu_seconds(live):
    """CPU seconds used so far by the web and worker processes, PostgreSQL and Redis."""
    parts = {}
    for name, process in live.processes.items():
        parent = psutil.Process(process.pid)
        for p in [parent, *parent.children(recursive=True)]:
            parts[name.rstrip("0123456789")] = parts.get(name.rstrip("0123456789"), 0) + sum(
                p.cpu_times()[:2]
            )
    for p in psutil.process_iter(["name", "cpu_times"]):
        if p.info["name"] in ("postgres", "redis-server"):
            parts[p.info["name"]] = parts.get(p.info["name"], 0) + sum(p.info["cpu_times"][:2])
    return parts


def ms(results, key):
    values = [r[key] * 1000 for r in results]
    return f"p50 {statistics.median(values):.1f} ms, p99 {percentile(values, 99):.1f} ms"


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback: answers 204 and counts what it was sent."""

    daemon_threads = True

    def __init__(self):
        self.received = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    server.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"


def integrations(args, user, headers, live, fresh_threads):
    """Throughput with metrics and webhooks off, then on, in alternating rounds."""
    from webhooks.models import Delivery, Endpoint
    from webhooks.services import endpoint_create

    receiver = Receiver()
    live.env["WEBHOOKS_ALLOW_PRIVATE"] = "1"
    address = "127.0.0.1", live.port
    rates, cpus, ends = {"off": [], "on": []}, {"off": [], "on": []}, 0
    for _ in range(args.integrations):
        for mode in ("off", "on"):
            live.env["METRICS_ENABLED"] = "1" if mode == "on" else "0"
            Endpoint.objects.filter(owner=user).delete()
            if mode == "on":
                endpoint_create(owner=user, url=receiver.url, events=["run.completed"])
                live.start("webhooks", "celery", "-A", "config", "worker", "-Q", "webhooks",
                           "-n", "bench-webhooks@%h", "-l", "warning")  # fmt: skip
            live.start_web()
            live.start_worker()
            time.sleep(3)
            threads = fresh_threads(int(args.seconds * 500))
            _, warm = asyncio.run(throughput(address, headers, threads[:200], args.clients, 1))
            before = cpu_seconds(live)
            rate, results = asyncio.run(
                throughput(address, headers, threads[200:], args.clients, args.seconds)
            )
            after = cpu_seconds(live)
            cpu = sum(after.values()) - sum(before.values())
            rates[mode].append(rate)
            cpus[mode].append(cpu * 1000 / len(results))
            print(f"  {mode}: {rate:.1f} runs/s, {cpus[mode][-1]:.1f} CPU ms per run", flush=True)
            if mode == "on":
                ends += len(warm) + len(results)
                deadline = time.monotonic() + 60  # the backlog drains
                while receiver.received < ends and time.monotonic() < deadline:
                    time.sleep(0.2)
            live.stop_all()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(
        f"metrics and webhooks off: {off:.1f} runs/s (rounds: "
        f"{', '.join(f'{r:.1f}' for r in rates['off'])}), {statistics.median(cpus['off']):.1f}"
        f" CPU ms per run; on: {on:.1f} runs/s ({', '.join(f'{r:.1f}' for r in rates['on'])}),"
        f" {statistics.median(cpus['on']):.1f} CPU ms per run; on/off = {on / off:.2f};"
        f" webhooks received {receiver.received} of {ends} ends"
        f" ({Delivery.objects.filter(status=Delivery.Status.PENDING).count()} still pending)"
    )


def main():
    from agents.models import ThreadAgent
    from runs.models import Thread

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20, help="length of a throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stops", type=int, default=100)
    parser.add_argument("--web", type=int, default=1, help="web (uvicorn) processes")
    parser.add_argument("--integrations", type=int, default=0, metavar="ROUNDS",
                        help="compare metrics and webhooks off and on instead")  # fmt: skip
    args = parser.parse_args()
    user, headers, live = prepare()
    fast, _ = user.agents.update_or_create(
        name="fast", defaults={"config": {"demo": {"words": args.words, "delay_ms": 0}}}
    )
    slow, _ = user.agents.update_or_create(
        name="slow", defaults={"config": {"demo": {"words": 1000, "delay_ms": 60}}}
    )
    address = "127.0.0.1", live.port

    def fresh_threads(agent, count):  # a thread holds one active run at a time
        threads = Thread.objects.bulk_create([Thread(owner=user) for _ in range(count)])
        ThreadAgent.objects.bulk_create([ThreadAgent(thread=t, agent=agent) for t in threads])
        return [t.pk for t in threads]

    if args.integrations:
        try:
            integrations(args, user, headers, live, lambda count: fresh_threads(fast, count))
        finally:
            live.stop_all()
        return
    live.start_web(args.web)
    try:
        for workers in args.workers:
            for i in range(workers):
                live.start_worker(f"worker{i}")
            time.sleep(3)  # the workers start
            threads = fresh_threads(fast, int(args.seconds * 500))
            # warm up: imports, connection pools, the pub/sub listener
            asyncio.run(throughput(address, headers, threads[:200], args.clients, 1))
            before = cpu_seconds(live)
            rate, results = asyncio.run(
                throughput(address, headers, threads[200:], args.clients, args.seconds)
            )
            after = cpu_seconds(live)
            cpu = ", ".join(
                f"{part} {(after[part] - before.get(part, 0)) * 1000 / len(results):.1f}"
                for part in after
            )
            print(
                f"{args.web} web and {workers} worker process(es), {args.clients} clients,"
                f" {len(results)} runs of {args.words} words: {rate:.1f} runs/s; from the POST to"
                f" the first event {ms(results, 'first')}, to the terminal event"
                f" {ms(results, 'end')}; CPU ms per run: {cpu}",
                flush=True,
            )
            if workers == 1:
                results = asyncio.run(
                    throughput(address, headers, fresh_threads(fast, 3000), 1, args.seconds / 2)
                )
                print(
                    f"  one client at a time, {len(results[1])} runs: from the POST to the first"
                    f" event {ms(results[1], 'first')}, to the terminal event"
                    f" {ms(results[1], 'end')}",
                    flush=True,
                )
            for i in range(workers):
                live.stop(f"worker{i}")
        live.start_worker()
        threads = fresh_threads(slow, args.stops)
        results = asyncio.run(stops(address, headers, threads, 4))
        print(
            f"{len(results)} stops, from the stop request to the terminal event:"
            f" {ms(results, 'stopped')}"
        )
    finally:
        live.stop_all()


if __name__ == "__main__":
    main()
