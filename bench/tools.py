"""Tool call latency as a client sees it: the time from a run's `tool.started` event to its
`tool.done`, at the client, for the built-in `calculator` and for a trivial MCP tool (`echo`,
on the SDK's own server over streamable HTTP on 127.0.0.1), in alternating runs of one agent
through real web and worker processes. The demo model's `/tool` lines make each call.

    .venv/bin/python bench/tools.py [--runs 200]
"""

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("MCP_ALLOW_PRIVATE", "1")  # the benchmark's MCP server is on 127.0.0.1

from client import Stream, request
from setup import percentile, prepare

CALLS = {
    "calculator": '/tool calculator {"expression": "6 * 7"}',
    "mcp echo": '/tool bench__echo {"text": "hi"}',
}


async def tool_time(address, headers, thread_id, message):
    """Seconds from tool.started to tool.done at the client, for one run making one call."""
    marks = {}
    status, body = await request(
        address, "POST", f"/api/threads/{thread_id}/runs/", headers, {"message": message}
    )
    assert status == 202, (status, body)

    def on_event(event_id, event_type, data, received_at):
        if event_type in ("tool.started", "tool.done"):
            marks[event_type] = received_at
            marks.setdefault("data", []).append(data)
        return event_type == "run.status" and '"completed"' in data

    stream = Stream(address, f"/api/runs/{body['id']}/events/", headers, on_event)
    await stream.run()
    assert stream.error is None and "tool.done" in marks, (stream.error, marks)
    assert '"error": null' in marks["data"][-1], marks["data"]
    return marks["tool.done"] - marks["tool.started"]


def main():
    from agents.models import McpServer, ThreadAgent
    from runs.models import Thread

    from mcp_servers import HttpServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200, help="runs of each tool")
    args = parser.parse_args()
    user, headers, live = prepare()
    mcp = HttpServer().start()
    server, _ = McpServer.objects.update_or_create(
        owner=user, name="bench", defaults={"url": mcp.url, "tools": [], "tools_refreshed": None}
    )
    agent, _ = user.agents.update_or_create(
        name="tools", defaults={"tools": ["calculator"], "config": {"demo": {"delay_ms": 0}}}
    )
    agent.mcp_servers.set([server])
    address = "127.0.0.1", live.port
    live.start_web()
    live.start_worker()
    try:
        time.sleep(3)  # the worker starts
        count = args.runs * len(CALLS) + 20
        threads = Thread.objects.bulk_create([Thread(owner=user) for _ in range(count)])
        ThreadAgent.objects.bulk_create([ThreadAgent(thread=t, agent=agent) for t in threads])
        pending = iter(t.pk for t in threads)
        for _ in range(10):  # warm up: imports, pools, the MCP tool list
            for message in CALLS.values():
                asyncio.run(tool_time(address, headers, next(pending), message))
        times = {name: [] for name in CALLS}
        for _ in range(args.runs):  # alternating, so both meet the same machine
            for name, message in CALLS.items():
                seconds = asyncio.run(tool_time(address, headers, next(pending), message))
                times[name].append(seconds * 1000)
        for name, values in times.items():
            print(
                f"{name}: from tool.started to tool.done at the client, p50"
                f" {statistics.median(values):.1f} ms, p99 {percentile(values, 99):.1f} ms"
                f" (n={len(values)})",
                flush=True,
            )
    finally:
        live.stop_all()
        mcp.stop()


if __name__ == "__main__":
    main()
