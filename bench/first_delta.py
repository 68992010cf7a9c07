"""Time from the POST that starts a run to the first message.delta at an SSE client.

Demo model at zero delay, one web process (uvicorn) and one worker process, as a user sees it:
the client POSTs, then opens the run's stream (which replays from the start) and stops the
clock at the first delta.

    .venv/bin/python bench/first_delta.py [--runs 50]
"""

import argparse
import time

import httpx

from setup import describe, prepare
from sse import parse


def first_delta(client, base_url, headers, thread):
    started = time.perf_counter()
    r = client.post(
        f"{base_url}/api/threads/{thread.pk}/runs/", json={"message": "Hello"}, headers=headers
    )
    r.raise_for_status()
    url = f"{base_url}/api/runs/{r.json()['id']}/events/"
    with client.stream("GET", url, headers=headers) as response:
        for event in parse(response.iter_lines()):
            if event.type == "message.delta":
                elapsed = time.perf_counter() - started
                break
    return elapsed * 1000


def main():
    # after setup.py has configured Django
    from agents.models import Thread

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    user, headers, live = prepare()
    agent = user.agents.get()
    agent.config = {"demo": {"words": 20, "delay_ms": 0}}
    agent.save()
    live.start_web()
    live.start_worker()
    try:
        with httpx.Client(timeout=30) as client:
            threads = [Thread.objects.create(owner=user, agent=agent) for _ in range(args.runs + 5)]
            for thread in threads[:5]:  # warm up: imports, connections, the pub/sub listener
                first_delta(client, live.base_url, headers, thread)
            times = [first_delta(client, live.base_url, headers, t) for t in threads[5:]]
    finally:
        live.stop_all()
    print(f"POST to first message.delta at the SSE client: {describe(times)}")


if __name__ == "__main__":
    main()
