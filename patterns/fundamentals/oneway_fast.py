"""One-way messages, faster: every message that is ready, taken at once.

`oneway` awaits once per message, as the clients teach it. An `await` that finds a message
already there still costs a turn of the event loop and a future: far more than the
message itself. Here the receiver awaits only when nothing is ready, then takes all that
is: ZeroMQ through a synchronous shadow of the socket (`recv(NOBLOCK)` until `zmq.Again`),
Redis with one `BLPOP` for the first message and one `LPOP` with a count for the rest.
Notebook 00's "Going faster" measures both against `oneway` and the raw client loop.
"""

import contextlib
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns.measure import (
    DeliveryLedger,
    LatencyRecorder,
    ThroughputMeter,
    read_end,
    read_probe,
)
from patterns.messages import MalformedMessage

BATCH = 1_000


async def zmq_batches(socket: zmq.asyncio.Socket) -> AsyncIterator[list[bytes]]:
    """Wait until a message is ready, then take every ready one (up to BATCH) at once."""
    nonblocking = zmq.Socket.shadow(socket.underlying)
    while True:
        await socket.poll(flags=zmq.POLLIN)
        batch = []
        with contextlib.suppress(zmq.Again):
            while len(batch) < BATCH:
                batch.append(nonblocking.recv(zmq.NOBLOCK))
        yield batch


async def redis_batches(client: aioredis.Redis, key: str) -> AsyncIterator[list[bytes]]:
    """BLPOP waits for the first message; LPOP with a count takes what else is queued."""
    while True:
        if (popped := await client.blpop([key], timeout=1)) is None:
            continue
        rest = await client.lpop(key, BATCH - 1) or []
        yield [popped[1], *rest]


async def receive(
    batches: AsyncIterator[list[bytes]],
    producers: int,
    meter: ThroughputMeter,
    latency: LatencyRecorder,
    ledger: DeliveryLedger,
) -> dict[str, int]:
    """`oneway.receive`, a batch at a time: one clock read per batch."""
    sent: dict[str, int] = {}
    malformed = 0
    async for batch in batches:
        now_ns = time.perf_counter_ns()  # when the batch became ours
        if not meter.count:
            meter.started_ns = now_ns
        for frame in batch:
            try:
                if (end := read_end(frame)) is not None:
                    sent[end[0]] = end[1]
                    continue
                producer, seq, sent_ns = read_probe(frame)
            except MalformedMessage:
                malformed += 1
                continue
            ledger.record(producer, seq)
            latency.record(sent_ns, now_ns)
        meter.add(len(batch))
        if len(sent) == producers:
            break
    sent["malformed"] = malformed
    return sent
