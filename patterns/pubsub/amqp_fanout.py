"""AMQP publish/subscribe with aio-pika: a fanout exchange copies each message to every queue.

    connection = await clients.amqp()
    channel = await connection.channel()               # publisher confirms: on by default
    exchange = await declare_exchange(channel)
    await publish(exchange, b"hello")                  # returns once RabbitMQ has it
    async with subscription(connection, "chat_srv_8080") as messages:
        async for message in messages: ...             # acked when the next one is asked for

Each subscriber consumes a queue of its own bound to the exchange, and the kind of queue
is the guarantee:

* **exclusive** (a chat instance's `chat_srv_<port>`): it lives as long as the
  subscriber's connection. While connected, a slow subscriber loses nothing (its backlog
  waits in the queue, in RabbitMQ); when the connection drops, the queue and what it held
  are gone, and what is published until the robust connection has declared it again is
  lost for this subscriber, as with Redis Pub/Sub. It reports "reconnected" then.
* **durable** (the history service's `chat_history`): it outlives its consumer. What is
  published while the consumer is stopped waits in it (persistent messages survive a
  broker restart too), and a message leaves it only once acknowledged, after it was
  handled: at least once. A consumer that dies between handling and acking gets the
  message again, so it handles it by message id.

The prefetch count bounds what RabbitMQ sends ahead of the acks: the consumer's memory.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractQueueIterator,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelInvalidStateError

from patterns.events import OnEvent, log_event

EXCHANGE = "chat"  # docs/wire.md
PREFETCH = 100


async def declare_exchange(channel: AbstractChannel, name: str = EXCHANGE) -> AbstractExchange:
    # durable, as amqplib's assertExchange declares it by default: the book's samples and
    # ours must declare it alike, or RabbitMQ refuses the second (PRECONDITION_FAILED)
    return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_queue(
    channel: AbstractChannel, name: str, exchange: str = EXCHANGE, durable: bool = False
) -> AbstractQueue:
    """A queue bound to the exchange: durable, or exclusive to this connection."""
    queue = await channel.declare_queue(name, durable=durable, exclusive=not durable)
    await queue.bind(await declare_exchange(channel, exchange))
    return queue


async def publish(exchange: AbstractExchange, message: bytes) -> None:
    """A persistent message with an id of its own; returns once RabbitMQ confirmed it."""
    persistent = aio_pika.DeliveryMode.PERSISTENT
    body = aio_pika.Message(message, delivery_mode=persistent, message_id=uuid.uuid4().hex)
    await exchange.publish(body, routing_key="")


@contextlib.asynccontextmanager
async def subscription(
    connection: AbstractRobustConnection,
    queue: str,
    exchange: str = EXCHANGE,
    prefetch: int = PREFETCH,
    on_event: OnEvent = log_event,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Consume the exclusive `queue` bound to `exchange` on a channel of its own: everything
    published from now on reaches it while the connection lasts."""

    def reconnected(_: object) -> None:
        on_event("reconnected", queue=queue, missed="what was published while it was gone")

    async with connection.channel() as channel:
        await channel.set_qos(prefetch_count=prefetch)
        declared = await declare_queue(channel, queue, exchange)
        on_event("subscribed", queue=queue, exchange=exchange)
        connection.reconnect_callbacks.add(reconnected)
        try:
            async with declared.iterator() as deliveries:
                yield messages(deliveries)
        finally:
            connection.reconnect_callbacks.discard(reconnected)


async def messages(deliveries: AbstractQueueIterator) -> AsyncIterator[bytes]:
    """Each message body; it is acked when the next one is asked for, after it was handled."""
    async for message in deliveries:
        try:
            async with message.process():
                yield message.body
        except ChannelInvalidStateError:
            pass  # its channel died before the ack: the message went with an exclusive queue
        except Exception as error:
            # aiormq fails an ack caught by the connection's drop with a bare Exception
            if type(error) is not Exception:
                raise
