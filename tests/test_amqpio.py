"""The awaitable layer over pika's asyncio adapter, against the real RabbitMQ."""

import asyncio
import uuid

import pika.exceptions
import pytest

from patterns import amqpio, config


@pytest.fixture
async def channel():
    connection = await amqpio.connect(config.AMQP_URL)
    queue = f"test.amqpio.{uuid.uuid4().hex[:8]}"
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=True)
        yield channel, queue
    finally:
        if not connection.closing.done():
            cleaner = await connection.channel()
            await cleaner.queue_delete(queue)
        await connection.close()


async def test_every_publish_is_confirmed_and_a_get_takes_one_message_or_none(channel) -> None:
    channel, queue = channel
    persistent = amqpio.Properties(delivery_mode=2, headers={"x-attempts": 3})
    heard: list[bool] = []  # as each confirm is read, before the futures' awaiters
    confirms = [channel.basic_publish(b"%d" % n, routing_key=queue, properties=persistent,
                                      on_confirm=heard.append)
                for n in range(500)]  # fmt: skip
    assert await channel.wait_for_confirms() is True
    assert heard == [True] * 500 and all(confirm.done() for confirm in confirms)
    assert await asyncio.gather(*confirms) == [True] * 500
    assert (await channel.queue_declare(queue, passive=True)).message_count == 500
    first = await channel.basic_get(queue, no_ack=True)
    assert first is not None
    assert (first.body, first.redelivered, first.headers) == (b"0", False, {"x-attempts": 3})
    await channel.queue_delete(queue)
    await channel.queue_declare(queue, durable=True)
    assert await channel.basic_get(queue) is None  # empty: no message, no wait


async def test_a_channel_the_broker_closes_fails_what_waits_on_it_and_what_comes_after(
    channel,
) -> None:
    channel, queue = channel
    consuming = asyncio.Event()
    await channel.basic_consume(queue, lambda _: consuming.set())
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        await channel.queue_declare(f"{queue}.absent", passive=True)
    assert channel.is_closed and channel.connection.is_open  # only the channel is gone
    with pytest.raises(amqpio.ERRORS):
        await channel.basic_qos(prefetch_count=1)
    with pytest.raises(amqpio.ERRORS):
        channel.basic_publish(b"late", routing_key=queue)


async def test_a_deleted_queue_cancels_its_consumer() -> None:
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        queue = (await channel.queue_declare(exclusive=True)).queue
        cancelled = asyncio.Event()
        channel.on_cancel(lambda _: cancelled.set())
        await channel.basic_consume(queue, lambda _: None)
        await channel.queue_delete(queue)
        await asyncio.wait_for(cancelled.wait(), 5)
    finally:
        await connection.close()


async def test_an_unreachable_broker_is_an_error_that_names_the_cause() -> None:
    with pytest.raises(amqpio.ERRORS) as raised:
        await amqpio.connect("amqp://guest:guest@127.0.0.1:1/")
    assert "refused" in repr(raised.value).lower()
