"""Live statistics from a measuring process, reported a few times a second.

A process that measures (a receiver, a requester) should not also draw the plot: turning
a figure into a PNG takes tens of milliseconds, which would show up in the very latency
tail being measured. So the measuring child reports a small window summary every
`interval` seconds to its parent (see `patterns.processes.report`), and the notebook,
which only draws, plots those windows.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from patterns.measure.latency import LatencyRecorder
from patterns.measure.throughput import ThroughputMeter

Emit = Callable[..., None]


def window(meter: ThroughputMeter, latency: LatencyRecorder | None, since: dict) -> dict:
    """The stats since the previous call (`since` carries state between calls)."""
    now_ns, count = time.perf_counter_ns(), meter.count
    previous_ns = since.get("ns", meter.started_ns)
    stats: dict[str, Any] = {
        "t": round((now_ns - meter.started_ns) / 1e9, 3),
        "count": count,
        "rate": round((count - since.get("count", 0)) * 1e9 / max(1, now_ns - previous_ns), 1),
    }
    if latency is not None and len(latency) > since.get("index", 0):
        summary = latency.summary(start=since.get("index", 0))
        stats |= {"p50_ms": summary.p50_ns / 1e6, "p99_ms": summary.p99_ns / 1e6}
        since["index"] = len(latency)
    since |= {"ns": now_ns, "count": count}
    return stats


@contextlib.asynccontextmanager
async def reporting(
    emit: Emit,
    meter: ThroughputMeter,
    latency: LatencyRecorder | None = None,
    interval: float = 0.25,
    **labels: Any,
) -> AsyncIterator[None]:
    """Emit a "stats" window every `interval` s while the block runs, and one at its end.

    Windows start with the first message counted: the time a run spends waiting for its
    first message (a sender still starting) is not part of it.
    """
    since: dict = {}

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            if meter.count:
                emit("stats", **labels, **window(meter, latency, since))

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        emit("stats", **labels, **window(meter, latency, since))
