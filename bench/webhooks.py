"""The delivery timeline of one webhook whose receiver fails twice (500) and then answers 200,
through real web, worker (runs and the `webhooks` queue) and beat processes on a Redis of its
own: each attempt with its time since the run ended, its status and outcome. The retry
schedule is the default's shape, sixty times shorter (WEBHOOKS_RETRY_SCHEDULE below).

    .venv/bin/python bench/webhooks.py
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_server import RedisServer

REDIS = RedisServer()  # never a shared Redis: this one ends with the benchmark
SCHEDULE = "1,5,30,120,300,600,600"  # 5,300,1800,7200,18000,36000,36000 / 60, the first 1 s
os.environ.update(
    REDIS_URL=REDIS.url, WEBHOOKS_ALLOW_PRIVATE="1", WEBHOOKS_RETRY_SCHEDULE=SCHEDULE,
    WEBHOOKS_SWEEP_SECONDS="1", RUN_REAPER_SECONDS="1",
)  # fmt: skip

from setup import prepare  # noqa: E402  (Django, on the environment above)


def main():
    import httpx

    from agents.models import create_thread
    from runs.models import Run
    from webhooks import services
    from webhooks.models import Delivery

    from webhook_receiver import Receiver

    receiver = Receiver([500, 500])
    user, headers, live = prepare()
    Delivery.objects.filter(owner=user).delete()
    user.webhook_endpoints.all().delete()
    endpoint = services.endpoint_create(owner=user, url=receiver.url, events=["run.completed"])
    agent = user.agents.first()
    agent.config = {"demo": {"words": 5, "delay_ms": 0}}
    agent.save()
    live.start_web()
    live.start_worker(queues="runs,default,webhooks")
    live.start_beat()
    try:
        thread = create_thread(owner=user, agent=agent)
        r = httpx.post(f"{live.base_url}/api/threads/{thread.pk}/runs/", headers=headers,
                       json={"message": "Hi"}, timeout=30)  # fmt: skip
        assert r.status_code == 202, r.text
        received = receiver.wait(3, timeout=60)
        run = Run.objects.get(pk=r.json()["id"])
        delivery = Delivery.objects.get(endpoint=endpoint, run=run)
        deadline = time.monotonic() + 10
        while delivery.status == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            delivery.refresh_from_db()
        print(f"WEBHOOKS_RETRY_SCHEDULE={SCHEDULE}; the receiver answers 500, 500, then 200")
        print(f"delivery {delivery.webhook_id}: {delivery.status}")
        print("attempt  since the end   duration  status  outcome       webhook-id")
        for attempt, request in zip(delivery.attempt_set.order_by("number"), received, strict=True):
            since = (attempt.started - run.finished).total_seconds()
            print(f"{attempt.number:>7}  {since:>10.2f} s  {attempt.duration_ms:>5} ms"
                  f"  {attempt.status_code:>6}  {attempt.outcome:<12}  "
                  f"{request.headers['webhook-id']}")  # fmt: skip
    finally:
        live.stop_all()
        receiver.stop()
        REDIS.stop()


if __name__ == "__main__":
    main()
