"""Coordinated omission, shown on a toy service that stalls once.

The service answers one request at a time in about a millisecond, but freezes for
`STALL_S` once, a second into the run (a GC pause, a failover, a full disk). Two clients
measure it:

* closed loop: send, wait for the reply, send the next; latency from the actual send.
  During the stall it sends nothing, so one slow sample stands for the whole freeze.
* open loop: requests are due at a fixed rate whatever happens; latency from when each
  was *due*. Every request that fell due during the stall carries its share of it.
"""

import asyncio
import time

from patterns.measure import LatencyRecorder, LatencySummary, paced

SERVICE_S = 0.001
STALL_AT_S = 1.0
STALL_S = 0.3


class StallingService:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stalled = False
        self.lock = asyncio.Lock()  # one request at a time, like a single-threaded server

    async def handle(self) -> None:
        async with self.lock:
            if not self.stalled and time.perf_counter() - self.started >= STALL_AT_S:
                self.stalled = True
                await asyncio.sleep(STALL_S)
            await asyncio.sleep(SERVICE_S)


async def closed_loop(duration_s: float) -> LatencySummary:
    service, latency = StallingService(), LatencyRecorder()
    while time.perf_counter() - service.started < duration_s:
        sent_ns = time.perf_counter_ns()
        await service.handle()
        latency.record(sent_ns)
    return latency.summary()


async def open_loop(duration_s: float, rate: float) -> LatencySummary:
    service, latency = StallingService(), LatencyRecorder()

    async def request(due_ns: int) -> None:
        await service.handle()
        latency.record(due_ns)

    requests = []
    async for due in paced(rate, int(duration_s * rate), precise=False):
        requests += [asyncio.create_task(request(due_ns)) for due_ns in due]
    await asyncio.gather(*requests)
    return latency.summary()
