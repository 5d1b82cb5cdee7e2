"""Which AMQP client: messages/s consumed by aiormq, aio-pika and pika (asyncio, blocking).

Each round fills a queue with 64-byte messages, then each client consumes all of them
with the same settings (prefetch 1,000, one `multiple` ack per 500 messages). Rounds
alternate the clients, so load on the machine hits all of them alike; the result is the
median per client.
"""

import asyncio
import statistics
import time
import uuid

import aio_pika
import aiormq
import pika
import pika.channel
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from patterns import config

BODY = b"x" * 64
PREFETCH = 1_000
ACK_EVERY = 500


def fill(queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(config.AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=False)
    for _ in range(count):
        channel.basic_publish("", queue, BODY)
    connection.close()


def consume_pika(queue: str, count: int) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(config.AMQP_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    started = time.perf_counter()
    for n, (method, _, _) in enumerate(channel.consume(queue), start=1):
        if n % ACK_EVERY == 0 or n == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if n == count:
            break
    elapsed = time.perf_counter() - started
    channel.cancel()
    connection.close()
    return count / elapsed


async def consume_aiormq(queue: str, count: int) -> float:
    connection = await aiormq.connect(config.AMQP_URL)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=PREFETCH)
    done = asyncio.Event()
    received = 0

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        nonlocal received
        received += 1
        if received % ACK_EVERY == 0 or received == count:
            await channel.basic_ack(message.delivery.delivery_tag, multiple=True)
        if received == count:
            done.set()

    started = time.perf_counter()
    await channel.basic_consume(queue, on_message)
    await done.wait()
    elapsed = time.perf_counter() - started
    await connection.close()
    return count / elapsed


async def consume_pika_asyncio(queue: str, count: int) -> float:
    """pika's asyncio adapter: callbacks on the event loop, no task per delivery."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    closed: asyncio.Future[None] = loop.create_future()
    received = 0
    started = 0.0

    def fail(_: object, error: BaseException) -> None:
        if not done.done():
            done.set_exception(ConnectionError(f"pika: {error}"))

    def on_close(_: object, error: BaseException) -> None:
        fail(_, error)
        if not closed.done():
            closed.set_result(None)

    def on_message(
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        _properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        nonlocal received
        received += 1
        if received % ACK_EVERY == 0 or received == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if received == count and not done.done():
            done.set_result(time.perf_counter() - started)

    def consume(channel: pika.channel.Channel) -> None:
        nonlocal started
        started = time.perf_counter()
        channel.basic_consume(queue, on_message)

    def on_channel(channel: pika.channel.Channel) -> None:
        channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _: consume(channel))

    connection = AsyncioConnection(
        pika.URLParameters(config.AMQP_URL),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=fail,
        on_close_callback=on_close,
        custom_ioloop=loop,
    )
    try:
        elapsed = await asyncio.wait_for(done, 120)
    finally:
        if not closed.done():
            connection.close()
            await asyncio.wait_for(closed, 10)
    return count / elapsed


async def consume_aio_pika(queue: str, count: int) -> float:
    connection = await aio_pika.connect(config.AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    declared = await channel.get_queue(queue)
    received = 0
    started = time.perf_counter()
    async with declared.iterator() as messages:
        async for message in messages:
            received += 1
            if received % ACK_EVERY == 0 or received == count:
                await message.ack(multiple=True)
            if received == count:
                break
    elapsed = time.perf_counter() - started
    await connection.close()
    return count / elapsed


async def run(quick: bool) -> dict:
    count, rounds = (10_000, 1) if quick else (100_000, 3)
    queue = f"bench:amqpclients:{uuid.uuid4().hex[:8]}"
    rates: dict[str, list[float]] = {
        "aiormq": [],
        "aio-pika": [],
        "pika (asyncio)": [],
        "pika (blocking)": [],
    }
    try:
        for _ in range(rounds):
            for client in rates:
                await asyncio.to_thread(fill, queue, count)
                if client == "aiormq":
                    rate = await consume_aiormq(queue, count)
                elif client == "aio-pika":
                    rate = await consume_aio_pika(queue, count)
                elif client == "pika (asyncio)":
                    rate = await consume_pika_asyncio(queue, count)
                else:
                    rate = await asyncio.to_thread(consume_pika, queue, count)
                rates[client].append(rate)
    finally:
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await connection.close()
    return {
        "messages": count,
        "rounds": rounds,
        "consumed_per_s": {client: round(statistics.median(r)) for client, r in rates.items()},
    }
