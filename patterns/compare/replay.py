"""What a reader that comes late can still read: the decision table's replay column, measured.

    results = await replay.late_readers()   # {transport: {"sent", "first_reader", "late_reader"}}

For each fan-out transport, `COUNT` numbered messages are published to a first reader,
which reads them all (so they were delivered, and acknowledged where there is an ack);
then a second reader joins and reads for `WAIT_S`. What it gets is what the transport
keeps once a message has been delivered:

* Redis Pub/Sub: the late reader subscribes to the channel;
* ZeroMQ: the late reader connects a SUB socket to the publisher;
* AMQP: the late reader binds a queue of its own to the fanout exchange; beside it, a
  RabbitMQ *stream* queue (`x-queue-type: stream`), bound before the messages were
  published, is read from its first offset by a consumer that comes after them;
* Redis Streams: the late reader reads the stream from id 0.

Everything runs in this process, on names of its own, deleted at the end.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import zmq
import zmq.asyncio
from redis.asyncio.client import PubSub

from patterns import clients, processes

COUNT = 100  # messages published before the late reader comes
WAIT_S = 0.5  # how long the late reader reads


def _name() -> str:
    return f"compare.replay.{uuid.uuid4().hex[:8]}"


def _result(first: int, late: int, **more: int) -> dict[str, int]:
    return {"sent": COUNT, "first_reader": first, "late_reader": late} | more


async def _read(receive: Callable[[], Awaitable[int]], count: int, seconds: float) -> int:
    """Call `receive()` until `count` messages came or `seconds` passed; how many came."""
    got = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while got < count:
                got += await receive()
    return got


async def redis_pubsub() -> dict[str, int]:
    channel = _name()
    async with clients.redis() as redis, redis.pubsub() as first, redis.pubsub() as late:
        await first.subscribe(channel)
        await first.get_message(timeout=1.0)  # its subscribe confirmation
        for n in range(COUNT):
            await redis.publish(channel, str(n))

        async def one(pubsub: PubSub) -> int:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            return int(message is not None)

        got = await _read(lambda: one(first), COUNT, 5.0)
        await late.subscribe(channel)
        late_got = await _read(lambda: one(late), COUNT, WAIT_S)
    return _result(got, late_got)


async def zmq_pubsub() -> dict[str, int]:
    context = zmq.asyncio.Context()
    try:
        endpoint = f"tcp://127.0.0.1:{processes.free_port()}"
        publisher = context.socket(zmq.XPUB)  # says when a subscriber has subscribed
        publisher.bind(endpoint)
        first, late = context.socket(zmq.SUB), context.socket(zmq.SUB)
        first.subscribe(b"")
        first.connect(endpoint)
        await publisher.recv()  # the first reader's subscription
        for n in range(COUNT):
            await publisher.send(str(n).encode())

        async def one(socket: zmq.asyncio.Socket) -> int:
            await socket.recv()
            return 1

        got = await _read(lambda: one(first), COUNT, 5.0)
        late.subscribe(b"")
        late.connect(endpoint)
        late_got = await _read(lambda: one(late), COUNT, WAIT_S)
    finally:
        context.destroy(linger=0)
    return _result(got, late_got)


async def amqp_fanout() -> dict[str, int]:
    name = _name()
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT)
        first = await channel.declare_queue(exclusive=True)
        await first.bind(exchange)
        stream = await channel.declare_queue(
            f"{name}.stream", durable=True, arguments={"x-queue-type": "stream"}
        )
        await stream.bind(exchange)
        try:
            for n in range(COUNT):
                await exchange.publish(aio_pika.Message(str(n).encode()), routing_key="")
            got = await _drain(first, COUNT, 5.0)
            late = await channel.declare_queue(exclusive=True)
            await late.bind(exchange)
            late_got = await _drain(late, COUNT, WAIT_S)
            reader = await connection.channel()
            await reader.set_qos(prefetch_count=COUNT)  # a stream queue needs a prefetch
            from_start = await reader.get_queue(stream.name, ensure=False)
            replayed = await _drain(from_start, COUNT, 5.0, {"x-stream-offset": "first"})
        finally:
            await channel.queue_delete(stream.name)
            await channel.exchange_delete(name)
    return _result(got, late_got, stream_queue_late_reader=replayed)


async def _drain(
    queue: aio_pika.abc.AbstractQueue, count: int, seconds: float, arguments: dict | None = None
) -> int:
    """Consume `queue` (acking each) until `count` came or `seconds` passed."""
    got = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds), queue.iterator(arguments=arguments) as messages:
            async for message in messages:
                await message.ack()
                got += 1
                if got == count:
                    break
    return got


async def redis_streams() -> dict[str, int]:
    stream = _name()
    async with clients.redis() as redis:
        try:
            for n in range(COUNT):
                await redis.xadd(stream, {"message": str(n)})
            first = await redis.xread({stream: "0"}, count=COUNT)
            late = await redis.xread({stream: "0"}, count=COUNT)
        finally:
            await redis.delete(stream)
    return _result(len(first[0][1]) if first else 0, len(late[0][1]) if late else 0)


async def late_readers() -> dict[str, dict[str, int]]:
    """Every fan-out transport: what a reader that comes after `COUNT` messages reads."""
    return {
        "redis": await redis_pubsub(),
        "zmq": await zmq_pubsub(),
        "amqp": await amqp_fanout(),
        "streams": await redis_streams(),
    }
