"""The raw loops: each pub/sub transport's client library used by hand, with no layers.

The baseline the benchmark (`python -m patterns.bench pubsub`) and notebooks 02-05
measure `patterns.pubsub` against: what a quick script would write for the most speed,
with no reconnects, no checks and no events. Redis Pub/Sub reads the socket itself and
parses with hiredis; ZeroMQ drains what is ready without an `await` per frame; AMQP uses
aiormq with one `multiple` ack per batch; both Redis publishers pipeline a batch.

Same interface as `patterns.pubsub.load`'s implementations: `subscription(options,
context)` yields an iterator of batches, `publisher(options, context)` a send of a batch.
"""

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiormq
import hiredis
import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import config

BATCH = 1_000


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
                    while len(batch) < BATCH:
                        batch.append(plain.recv(zmq.NOBLOCK)[skip:])
                yield batch

        try:
            yield zmq_batches()
        finally:
            socket.close(0)
    elif transport == "amqp":
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=BATCH)
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
                reply = await client.xread({topic: cursor}, count=BATCH, block=1000)
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
