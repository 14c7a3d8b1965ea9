"""How many open event streams one events server holds, and at what memory.

Starts the events app (sign-in off, no feed) in a child process that publishes a small event
every `--every` seconds, opens streams to it in steps, and after each step reports the child's
resident memory and threads, and how long one event took to reach every open stream.

    python -m benchmarks.event_streams --steps 1000 5000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from imagepipe.local.stack import free_port, wait_for_port


def serve(port: int, every: float) -> None:
    """The child: the events app on `port`, one event every `every` seconds."""
    from imagepipe.core.settings import Settings
    from web.events import EventHub, EventsThread, make_events_app

    hub = EventHub()
    server = EventsThread(make_events_app(Settings(auth=False), hub, None, 15.0), hub,
                          port=port).start()
    n = 0
    while True:
        time.sleep(every)
        n += 1
        server.publish({"event_id": f"e{n}", "type": "result.done", "image_id": f"i{n}",
                        "status": "done", "sent": time.time()})


def _status(pid: int) -> tuple[float, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b": connected\n\n")
    return reader, writer


async def _next_event(reader: asyncio.StreamReader, after: float) -> float:
    """Seconds from the publishing of the first event sent after `after` to its arrival here."""
    while True:
        line = await reader.readline()
        if line.startswith(b"data: "):
            sent = float(json.loads(line[6:])["sent"])
            if sent >= after:
                return time.time() - sent


async def measure(port: int, pid: int, steps: list[int]) -> list[dict[str, float]]:
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    base_rss, base_threads = _status(pid)
    rows = [{"streams": 0, "rss_mib": round(base_rss, 1), "threads": base_threads}]
    for target in steps:
        while len(streams) < target:
            batch = min(500, target - len(streams))
            streams += await asyncio.gather(*(_open(port) for _ in range(batch)))
        now = time.time()
        delays = await asyncio.gather(*(_next_event(reader, now) for reader, _ in streams))
        rss, threads = _status(pid)
        rows.append({"streams": len(streams), "rss_mib": round(rss, 1), "threads": threads,
                     "kib_per_stream": round((rss - base_rss) * 1024 / len(streams), 1),
                     "fanout_last_ms": round(max(delays) * 1000, 1)})
        print(json.dumps(rows[-1]), flush=True)
    for _, writer in streams:
        writer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.every)
        return 0
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.event_streams",
                              "--serve", str(port), "--every", str(args.every)])
    try:
        wait_for_port(child, "127.0.0.1", port, 30, "events app")
        print(json.dumps({"streams": 0, "rss_mib": round(_status(child.pid)[0], 1)}))
        asyncio.run(measure(port, child.pid, args.steps))
    finally:
        child.terminate()
        child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
