"""The work queue, the plain pattern per transport: one producer, competing workers.

The same shape as the hashsum cracker (notebooks 06-08) with nothing to hash, so what is
measured is the transport: every message goes to exactly one worker.

* ZeroMQ PUSH/PULL: the producer binds a PUSH socket and deals messages round-robin to
  the PULL sockets connected to it (it waits until `workers` have connected, or the first
  would get them all); when a worker's queue is full (its high-water mark), PUSH blocks.
* AMQP competing consumers: a durable queue, persistent messages, each published with a
  confirm; each worker consumes with a prefetch and acks a message once it is handled.
* Redis Streams consumer group: the producer XADDs; each worker XREADGROUPs new entries
  (`>`) as a member of the group and XACKs them once handled.

`producer` and `workers` are async context managers: the first yields a function that
sends a batch of messages, the second one async iterator of messages per worker.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import clients
from patterns.pubsub import amqp_fanout
from patterns.tasks import amqp as amqp_tasks
from patterns.tasks import streams as streams_tasks
from patterns.tasks.zeromq import wait_for_workers

TRANSPORTS = ("zmq", "amqp", "streams")
NAMES = {
    "zmq": "ZeroMQ PUSH/PULL",
    "amqp": "AMQP competing consumers",
    "streams": "Redis Streams group",
}
PREFETCH = 100  # AMQP: unacked messages a worker holds; Streams: entries per read
GROUP = "workers"
FIELD = b"task"
BLOCK_MS = 1_000
LINGER_MS = 10_000  # a closing PUSH may take this long to deliver what it queued

Send = Callable[[list[bytes]], Awaitable[None]]


@contextlib.asynccontextmanager
async def producer(
    transport: str, where: str, workers: int, context: zmq.asyncio.Context
) -> AsyncIterator[Send]:
    """Send messages to the queue (AMQP), stream (Streams) or endpoint (ZeroMQ) `where`."""
    if transport == "zmq":
        push = context.socket(zmq.PUSH)
        push.linger = LINGER_MS
        monitor = push.get_monitor_socket()
        push.bind(where)
        try:
            await wait_for_workers(monitor, workers)

            async def zmq_send(messages: list[bytes]) -> None:
                for message in messages:
                    await push.send(message)  # waits while every worker's queue is full

            yield zmq_send
        finally:
            push.disable_monitor()
            monitor.close(linger=0)
            push.close()  # lingers: what is queued still goes out
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()  # publisher confirms: on, aio-pika's default
            await channel.declare_queue(where, durable=True)

            async def amqp_send(messages: list[bytes]) -> None:
                for message in messages:
                    await amqp_tasks.publish(channel, where, message)  # persistent, confirmed

            yield amqp_send
    else:
        async with clients.redis() as redis:
            await streams_tasks.ensure_group(redis, where, GROUP)

            async def streams_send(messages: list[bytes]) -> None:
                for message in messages:
                    await redis.xadd(where, {FIELD: message})

            yield streams_send


async def zmq_messages(pull: zmq.asyncio.Socket) -> AsyncIterator[bytes]:
    while True:
        yield await pull.recv()


async def streams_messages(redis: aioredis.Redis, stream: str, me: str) -> AsyncIterator[bytes]:
    """New entries for this member of the group; a read's entries acked once handled."""
    while True:
        read = await redis.xreadgroup(GROUP, me, {stream: ">"}, count=PREFETCH, block=BLOCK_MS)
        entries = read[0][1] if read else []
        for _, fields in entries:
            yield fields[FIELD]
        if entries:
            await redis.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))


@contextlib.asynccontextmanager
async def worker(
    transport: str, where: str, context: zmq.asyncio.Context
) -> AsyncIterator[AsyncIterator[bytes]]:
    """One worker's messages; each is done (acked) once the next one is asked for."""
    if transport == "zmq":
        pull = context.socket(zmq.PULL)
        pull.linger = 0
        pull.connect(where)
        try:
            yield zmq_messages(pull)
        finally:
            pull.close()
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(where, durable=True)
            async with queue.iterator() as deliveries:
                yield amqp_fanout.messages(deliveries)  # acked after each is handled
    else:
        async with clients.redis() as redis:
            await streams_tasks.ensure_group(redis, where, GROUP)
            yield streams_messages(redis, where, f"worker-{uuid.uuid4().hex[:8]}")


async def forget(transport: str, where: str) -> None:
    """Delete the queue or stream a run used (ZeroMQ keeps nothing)."""
    if transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await channel.queue_delete(where)
    elif transport == "streams":
        async with clients.redis() as redis:
            await redis.delete(where)
