"""Pub/sub fan-out per transport: ours vs the client library used by hand, interleaved.

For each transport (redis, zmq, amqp, streams): one publisher process and one process
holding SUBSCRIBERS connections (`patterns.pubsub.load`). Closed loop (publish as fast as
possible) gives the fan-out throughput, deliveries per second summed over the subscribers;
open loop at a fixed offered rate gives p50/p99 latency. Each round runs the same workload
twice: through `patterns.pubsub` ("ours") and through the plain loops below ("raw"),
written directly against the same client libraries, with no reconnects, checks or
layers. Rounds alternate ours/raw so the shared machine's noise hits both; medians are
reported. `ratio` = ours / raw throughput. Target: ratio >= 0.9 for every transport.
"""

import argparse
import asyncio
import contextlib
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiormq
import hiredis
import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import config
from patterns.pubsub import load

SUBSCRIBERS = 4
TARGET = 0.9

# ---- the raw loops: the libraries by hand, as a quick script would use them ----------------


@contextlib.asynccontextmanager
async def subscription(options: argparse.Namespace, context: Any) -> AsyncIterator[Any]:
    transport, topic = options.transport, options.topic
    if transport == "redis":  # SUBSCRIBE on a socket, replies parsed by hiredis
        url = urlsplit(config.REDIS_URL)
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 6379)
        writer.write(hiredis.pack_command(("SUBSCRIBE", topic)))
        parser = hiredis.Reader()

        async def redis_batches() -> AsyncIterator[list[bytes]]:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                batch = []
                while (reply := parser.gets()) is not False:
                    if reply[0] == b"message":
                        batch.append(reply[2])
                if batch:
                    yield batch

        try:
            yield redis_batches()
        finally:
            writer.close()
    elif transport == "zmq":
        socket = context.socket(zmq.SUB)
        socket.rcvhwm = options.hwm
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode() + b" ")
        socket.connect(options.endpoint)
        skip = len(topic) + 1

        async def zmq_batches() -> AsyncIterator[list[bytes]]:
            plain = zmq.Socket.shadow(socket.underlying)
            while True:
                await socket.poll(flags=zmq.POLLIN)
                batch = []
                with contextlib.suppress(zmq.Again):
                    while len(batch) < 1000:
                        batch.append(plain.recv(zmq.NOBLOCK)[skip:])
                yield batch

        try:
            yield zmq_batches()
        finally:
            socket.close(0)
    elif transport == "amqp":
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1000)
        await channel.exchange_declare(topic, exchange_type="fanout", durable=True)
        declared = await channel.queue_declare(exclusive=True)
        await channel.queue_bind(declared.queue, topic)
        pending: list = []
        ready = asyncio.Event()

        async def on_message(message: Any) -> None:
            pending.append(message)
            ready.set()

        await channel.basic_consume(declared.queue, on_message)

        async def amqp_batches() -> AsyncIterator[list[bytes]]:
            nonlocal pending
            while True:
                await ready.wait()
                ready.clear()
                batch, pending = pending, []
                yield [m.body for m in batch]
                await channel.basic_ack(batch[-1].delivery_tag, multiple=True)

        try:
            yield amqp_batches()
        finally:
            await connection.close()
    else:
        client = aioredis.from_url(config.REDIS_URL)
        last = await client.xrevrange(topic, count=1)
        cursor = last[0][0] if last else b"0-0"

        async def stream_batches() -> AsyncIterator[list[bytes]]:
            nonlocal cursor
            while True:
                reply = await client.xread({topic: cursor}, count=1000, block=1000)
                if reply:
                    entries = reply[0][1]
                    cursor = entries[-1][0]
                    yield [fields[b"message"] for _, fields in entries]

        try:
            yield stream_batches()
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def publisher(options: argparse.Namespace, context: Any) -> AsyncIterator[Any]:
    transport, topic = options.transport, options.topic
    if transport in ("redis", "streams"):
        client = aioredis.from_url(config.REDIS_URL)

        async def redis_send(frames: list[bytes]) -> None:
            pipe = client.pipeline(transaction=False)
            for frame in frames:
                if transport == "redis":
                    pipe.publish(topic, frame)
                else:
                    pipe.xadd(topic, {"message": frame}, maxlen=options.maxlen, approximate=True)
            await pipe.execute()

        try:
            yield redis_send
        finally:
            await client.aclose()
    elif transport == "zmq":
        socket = context.socket(zmq.XPUB)
        socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        socket.sndhwm = options.hwm
        socket.bind(options.endpoint)
        for _ in range(options.subscribers):
            await socket.recv()  # a subscription
        plain = zmq.Socket.shadow(socket.underlying)
        prefix = topic.encode() + b" "

        async def zmq_send(frames: list[bytes]) -> None:
            for frame in frames:
                plain.send(prefix + frame, zmq.NOBLOCK)

        try:
            yield zmq_send
        finally:
            socket.close()
    else:
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel()
        await channel.exchange_declare(topic, exchange_type="fanout", durable=True)

        async def amqp_send(frames: list[bytes]) -> None:
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        f, exchange=topic, properties=aiormq.spec.Basic.Properties(delivery_mode=2)
                    )
                    for f in frames
                )
            )

        try:
            yield amqp_send
        finally:
            await connection.close()


# ---- the benchmark ----------------------------------------------------------------------


async def cleanup(transport: str, topic: str) -> None:
    if transport == "streams":
        client = aioredis.from_url(config.REDIS_URL)
        await client.delete(topic)
        await client.aclose()
    elif transport == "amqp":
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel()
        await channel.exchange_delete(topic)
        await connection.close()


async def measure(transport: str, impl: str, count: int, rate: int, seconds: float) -> dict:
    topic = f"bench:pubsub:{transport}:{uuid.uuid4().hex[:8]}"
    try:
        # no drops at the high-water mark in a throughput run: fan-out speed, not loss
        closed = await load.run(
            transport, topic, count, SUBSCRIBERS, impl=impl, hwm=count + 1, maxlen=count
        )
        opened = await load.run(
            transport, topic, int(rate * seconds), SUBSCRIBERS, rate=rate, impl=impl
        )
    finally:
        await cleanup(transport, topic)
    for result in (closed, opened):
        ledger = result["ledger"]
        counts = {k: ledger[k] for k in ("sent", "received", "lost", "duplicated")}
        assert ledger["lost"] == ledger["duplicated"] == 0, f"{transport} {impl}: {counts}"
    return {
        "rate": closed["rate"],
        "p50_ms": opened["latency"]["p50_ns"] / 1e6,
        "p99_ms": opened["latency"]["p99_ns"] / 1e6,
    }


async def run(quick: bool) -> dict:
    rounds, count, seconds = (2, 20_000, 1.0) if quick else (5, 100_000, 3.0)
    rate = 1_000  # offered per second to each of the SUBSCRIBERS, in the latency runs
    results: dict[str, Any] = {}
    for transport in load.TRANSPORTS:
        runs: dict[str, list[dict]] = {"ours": [], "raw": []}
        for round_number in range(rounds):
            order = ("ours", "raw") if round_number % 2 == 0 else ("raw", "ours")
            for impl in order:
                runs[impl].append(await measure(transport, impl, count, rate, seconds))
        medians = {
            impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for impl, rs in runs.items()
        }
        ratio = medians["ours"]["rate"] / medians["raw"]["rate"]
        results[transport] = {
            "deliveries_per_s": round(medians["ours"]["rate"]),
            "raw_deliveries_per_s": round(medians["raw"]["rate"]),
            "ratio": round(ratio, 3),
            "p50_ms": round(medians["ours"]["p50_ms"], 3),
            "p99_ms": round(medians["ours"]["p99_ms"], 3),
            "raw_p50_ms": round(medians["raw"]["p50_ms"], 3),
            "raw_p99_ms": round(medians["raw"]["p99_ms"], 3),
        }
    return {
        "subscribers": SUBSCRIBERS,
        "messages": count,
        "offered_rate": rate,
        "rounds": rounds,
        "transports": results,
        "target_ratio": TARGET,
        "meets_target": all(r["ratio"] >= TARGET for r in results.values()),
    }
