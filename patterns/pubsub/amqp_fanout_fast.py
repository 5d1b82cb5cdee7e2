"""AMQP fanout, tuned for throughput: `amqp_fanout` with confirms and acks taken together.

Same exchange, queues, guarantees and losses (see `amqp_fanout`). What changes:

* publishing: a batch is published at once on the channel's aiormq channel (what
  aio-pika runs on, without its per-message objects), and its confirms awaited together,
  where `amqp_fanout.publish` waits for each confirm before the next message goes;
* consuming: deliveries are taken as they come by a callback on the aiormq channel under
  aio-pika's (no aio-pika message object or iterator step per message; consuming again
  there when the robust connection comes back), handed over in batches, and each batch
  acknowledged with one `multiple` ack once it was handled.

Notebook 04's "Going faster" measures it side by side with `amqp_fanout` and the raw loop.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from patterns.events import OnEvent, log_event
from patterns.pubsub.amqp_fanout import EXCHANGE, declare_queue

PREFETCH = 1_000
Properties = Basic.Properties


async def publish_many(
    channel: AbstractChannel, messages: Sequence[bytes], exchange: str = EXCHANGE
) -> None:
    """Publish every message of the batch, persistent; return once all are confirmed."""
    underlay = await channel.get_underlay_channel()
    publish = underlay.basic_publish
    await asyncio.gather(
        *(
            publish(
                m,
                exchange=exchange,
                properties=Properties(delivery_mode=2, message_id=uuid.uuid4().hex),
            )
            for m in messages
        )
    )


@contextlib.asynccontextmanager
async def subscription(
    connection: AbstractRobustConnection,
    queue: str,
    exchange: str = EXCHANGE,
    prefetch: int = PREFETCH,
    on_event: OnEvent = log_event,
) -> AsyncIterator[AsyncIterator[list[bytes]]]:
    """Consume the exclusive `queue` bound to `exchange`, in batches."""
    delivered: list[DeliveredMessage] = []
    ready = asyncio.Event()

    async def take(message: DeliveredMessage) -> None:  # aiormq's own: no wrapper per message
        delivered.append(message)
        ready.set()

    async def batches() -> AsyncIterator[list[bytes]]:
        while True:
            await ready.wait()
            ready.clear()
            batch = delivered[:]
            delivered.clear()
            yield [message.body for message in batch]
            with contextlib.suppress(ChannelInvalidStateError):  # gone with its channel
                await batch[-1].channel.basic_ack(batch[-1].delivery_tag, multiple=True)

    async with connection.channel() as channel:
        await channel.set_qos(prefetch_count=prefetch)
        declared = await declare_queue(channel, queue, exchange)

        async def consume() -> None:  # on the aiormq channel aio-pika runs on now
            await (await channel.get_underlay_channel()).basic_consume(declared.name, take)

        consuming: set[asyncio.Task] = set()

        def reconnected(_: object) -> None:  # the robust channel declared the queue again
            delivered.clear()  # delivered on the dead channel: gone with the exclusive queue
            consuming.add(asyncio.create_task(consume()))
            on_event("reconnected", queue=queue, missed="what was published while it was gone")

        await consume()
        connection.reconnect_callbacks.add(reconnected)
        on_event("subscribed", queue=queue, exchange=exchange)
        try:
            yield batches()
        finally:
            connection.reconnect_callbacks.discard(reconnected)
