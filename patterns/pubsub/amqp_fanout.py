"""AMQP (RabbitMQ): a fanout exchange copies each message into every queue bound to it.

Each subscriber consumes its own queue, and the kind of queue is the guarantee:

* **exclusive** (a chat instance's `chat_srv_<port>`): it lives as long as the
  subscriber's connection. While connected, nothing is lost even if the subscriber is slow
  (the queue holds the backlog, in RabbitMQ rather than in the subscriber); when the
  connection drops, the queue and what is in it are gone, and what is published until the
  subscriber is back is lost for it, as with Redis Pub/Sub.
* **durable** (the history service's `chat_history`): named, it outlives its consumer.
  What is published while the consumer is stopped waits in the queue (persistent
  messages survive a broker restart too), and a message is removed only when the consumer
  acknowledges it, after storing it. At least once: a consumer that dies after storing but
  before acknowledging gets the message again, so it stores by message id.

Memory is bounded on the consumer's side by the prefetch count: RabbitMQ sends at most that
many unacknowledged messages. A batch is acknowledged with one `multiple` ack when the
consumer asks for the next batch, that is, after it has handled this one.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from patterns.pubsub.retry import Backoff, OnState, log_state, reason

EXCHANGE = "chat"  # WIRE.md
PREFETCH = 1000
CONNECTION_ERRORS = (OSError, aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.AMQPError)


async def declare_exchange(channel: aiormq.abc.AbstractChannel, exchange: str) -> None:
    # durable, as amqplib's assertExchange declares it by default: the book's samples and
    # ours must declare it alike, or RabbitMQ refuses the second (PRECONDITION_FAILED)
    await channel.exchange_declare(exchange, exchange_type="fanout", durable=True)


def persistent() -> Basic.Properties:
    """Properties of a persistent message with an id of its own (a durable consumer stores
    by id). A new object each time: aiormq writes a missing message id into the one given."""
    return Basic.Properties(delivery_mode=2, message_id=uuid.uuid4().hex)


class Publisher:
    """Publishes persistent messages with publisher confirms, awaited together per batch."""

    def __init__(self, url: str, exchange: str = EXCHANGE) -> None:
        self.url = url
        self.exchange = exchange
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def _open(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            await self.aclose()
            self._connection = await aiormq.connect(self.url)
            self._channel = await self._connection.channel(publisher_confirms=True)
            await declare_exchange(self._channel, self.exchange)
        return self._channel

    async def publish(self, payloads: Sequence[bytes]) -> None:
        """Return once RabbitMQ has confirmed every message of the batch (raises if not)."""
        channel = await self._open()
        publish = channel.basic_publish
        await asyncio.gather(
            *(publish(p, exchange=self.exchange, properties=persistent()) for p in payloads)
        )

    async def aclose(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = self._channel = None


class Subscriber:
    """`async with Subscriber(url, queue=...) as s:` then `async for batch in s.batches()`."""

    def __init__(
        self,
        url: str,
        queue: str,
        exchange: str = EXCHANGE,
        durable: bool = False,
        prefetch: int = PREFETCH,
        on_state: OnState = log_state,
    ) -> None:
        self.url = url
        self.queue = queue
        self.exchange = exchange
        self.durable = durable
        self.prefetch = prefetch
        self.on_state = on_state
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._pending: list[DeliveredMessage] = []
        self._ready = asyncio.Event()

    async def _connect(self) -> None:
        self._connection = connection = await aiormq.connect(self.url)
        connection.closing.add_done_callback(lambda _: self._ready.set())
        self._channel = channel = await connection.channel()
        await channel.basic_qos(prefetch_count=self.prefetch)
        await declare_exchange(channel, self.exchange)
        await channel.queue_declare(self.queue, durable=self.durable, exclusive=not self.durable)
        await channel.queue_bind(self.queue, self.exchange)
        await channel.basic_consume(self.queue, self._deliver)

    async def _deliver(self, message: DeliveredMessage) -> None:
        self._pending.append(message)
        self._ready.set()

    async def __aenter__(self) -> "Subscriber":
        await self._connect()
        self.on_state("subscribed", f"queue {self.queue} bound to {self.exchange}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    async def _reconnect(self) -> None:
        assert self._connection is not None
        closing = self._connection.closing
        error = closing.exception() if closing.done() and not closing.cancelled() else None
        why = reason(error) if error else "connection closed"
        kept = "it waits in the queue" if self.durable else "it is lost with the queue"
        self.on_state("lost", f"{self.queue}: {why}; what is published now: {kept}")
        backoff = Backoff()
        while True:
            await backoff.wait()
            try:
                await self._connect()
            except CONNECTION_ERRORS as retry_error:
                self.on_state("retrying", reason(retry_error))
            else:
                self.on_state("reconnected", f"consuming {self.queue} again")
                return

    async def deliveries(self) -> AsyncIterator[list[DeliveredMessage]]:
        """What was delivered, batch by batch; each batch is acknowledged when the next one
        is asked for, that is, after it was handled. Reconnects when the connection drops."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            assert self._connection is not None and self._channel is not None
            if batch:
                yield batch
                if not self._connection.is_closed:
                    await self._channel.basic_ack(batch[-1].delivery_tag, multiple=True)
            if self._connection.is_closed:
                self._pending.clear()  # delivered on a dead channel: a durable queue resends
                await self._reconnect()

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The message bodies of `deliveries()`."""
        async for batch in self.deliveries():
            yield [message.body for message in batch]
