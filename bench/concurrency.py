"""How many slow demo runs one worker process carries at once.

Starts --runs runs whose demo model takes about --seconds each, all at once, samples how many
are running (in the database) and how many have written a delta in the last second (in their
event logs), and reports the peaks and the worker's memory.

    .venv/bin/python bench/concurrency.py [--runs 150] [--seconds 10]
"""

import argparse
import os
import time

from setup import prepare


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def intact(run_id):
    """Whether the run's reply in its event log is the one saved in the database."""
    from runs.models import Message
    from runs.stream import logged_texts

    reply = Message.objects.get(run_id=run_id, role="assistant")
    return logged_texts(run_id).get(reply.pk) == reply.content


def main():
    # after setup.py has configured Django
    from agents.models import create_thread
    from agents.services import agent_start
    from runs import stream
    from runs.models import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=100, help="the worker's threads")
    args = parser.parse_args()
    os.environ["WORKER_CONCURRENCY"] = str(args.concurrency)
    user, _, live = prepare()
    agent = user.agents.get(name="Demo")
    words = 50
    agent.config = {"demo": {"words": words, "delay_ms": int(args.seconds * 1000 / words)}}
    agent.save()
    worker = live.start_worker()
    try:
        time.sleep(3)  # let the worker start
        idle_rss = rss_mb(worker.pid)
        threads = [create_thread(owner=user, agent=agent) for _ in range(args.runs)]
        runs = [agent_start(user=user, thread=t, message="Slowly").pk for t in threads]
        channels = [f"run-{r}" for r in runs]
        last_ids = dict.fromkeys(channels, 0)
        peak_running = peak_progressing = 0
        peak_rss = idle_rss
        started = time.monotonic()
        while Run.objects.filter(pk__in=runs, status__in=Run.ACTIVE).exists():
            time.sleep(1)
            running = {
                f"run-{pk}"
                for pk in Run.objects.filter(pk__in=runs, status=Run.Status.RUNNING).values_list(
                    "pk", flat=True
                )
            }
            progressing = 0
            for channel in channels:
                newest = stream.StreamStorage().get_current_id(channel)
                progressing += channel in running and newest > last_ids[channel]
                last_ids[channel] = newest
            peak_running = max(peak_running, len(running))
            peak_progressing = max(peak_progressing, progressing)
            peak_rss = max(peak_rss, rss_mb(worker.pid))
        elapsed = time.monotonic() - started
        completed = Run.objects.filter(pk__in=runs, status=Run.Status.COMPLETED).count()
        whole = sum(intact(run) for run in runs)
    finally:
        live.stop_all()
    print(
        f"{args.runs} runs of ~{args.seconds:g} s in one worker process: peak {peak_running}"
        f" running at once, peak {peak_progressing} of them writing within the same second;"
        f" {completed} completed in {elapsed:.1f} s, {whole} with every delta in the log;"
        f" worker RSS {idle_rss:.0f} MB idle, {peak_rss:.0f} MB at peak"
    )


if __name__ == "__main__":
    main()
