"""The timeline of one run whose model first answers 429 with `Retry-After: 2`, as a client of
real web and worker processes sees it: each event with its time since the POST. The model is
the local fake chat-completions server of the tests (tests/fakellm.py).

    .venv/bin/python bench/retries.py
"""

import asyncio
import json
import os
import time

from client import Stream, request
from setup import prepare


async def timeline(address, headers, thread_id):
    status, body = await request(
        address, "POST", f"/api/threads/{thread_id}/runs/", headers, {"message": "Hi"}
    )
    posted = time.time()
    assert status == 202, (status, body)
    events = []

    def on_event(event_id, event_type, data, received_at):
        events.append((received_at - posted, event_type, data))
        return event_type == "run.status" and json.loads(data)["status"] in (
            "completed", "failed", "stopped",
        )  # fmt: skip

    await Stream(address, f"/api/runs/{body['id']}/events/", headers, on_event).run()
    return events


def main():
    from agents.models import create_thread

    from fakellm import FakeLLM, text  # tests/, on the path setup made

    fake = FakeLLM()
    os.environ.update(LLM_BASE_URL=fake.base_url, LLM_MAX_RETRIES="3")  # for the processes
    user, headers, live = prepare()
    agent, _ = user.agents.update_or_create(name="remote", defaults={"model": "fake-model"})
    fake.script([text("Warm")])  # a first run loads the SDK, out of the timeline
    fake.fail(429, "rate limited", headers={"Retry-After": "2"})
    fake.script([text("Hello"), text(" after"), text(" the wait.")])
    live.start_web()
    live.start_worker()
    try:
        time.sleep(3)  # the worker starts
        address = ("127.0.0.1", live.port)
        asyncio.run(timeline(address, headers, create_thread(owner=user, agent=agent).pk))
        del fake.requests[:]
        thread = create_thread(owner=user, agent=agent)
        for seconds, kind, data in asyncio.run(
            timeline(("127.0.0.1", live.port), headers, thread.pk)
        ):
            shown = {k: v for k, v in json.loads(data or "{}").items() if k != "run"}
            print(f"{seconds * 1000:8.1f} ms  {kind:<14} {json.dumps(shown)[:110]}")
        print("requests at the model (s after the first):", [
            round(r.at - fake.requests[0].at, 2) for r in fake.requests
        ])  # fmt: skip
    finally:
        live.stop_all()
        fake.close()


if __name__ == "__main__":
    main()
