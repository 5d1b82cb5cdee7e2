"""The return address over AMQP: each request says where its reply goes (`reply_to`).

Requests go to one queue, `requests_queue`, that any number of repliers consume: they
compete, and none of them knows the requesters. Each request carries two properties:
`reply_to`, the requester's own reply queue (exclusive to its connection, named by the
server), and `correlation_id`, its id. A replier publishes the reply to the `reply_to`
queue through the default exchange with the same `correlation_id`, then acks the
request, so a replier that dies before replying leaves the request to another one.

    python -m patterns.reqrep.replier --transport amqp

    async with amqp.requester() as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

With `direct=True` the requester uses RabbitMQ's direct reply-to instead: `reply_to` is the
pseudo-queue `amq.rabbitmq.reply-to`, and the broker hands replies straight to the
requester's channel, with no reply queue to declare or delete.

What the requester does beyond the book's sample:

* each request expires (`expiration`) when its requester stops waiting, so a replier that
  was down does not work through requests nobody wants any more;
* replies are published `mandatory`: one addressed to a reply queue that is gone (its
  requester restarted) comes back to the replier, which counts it, instead of vanishing.
  (Direct reply-to treats its pseudo-queue as unroutable for `mandatory`, so those replies
  are published without it: RabbitMQ drops them silently if the requester is gone.)
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPError, PublishError
from pamqp.commands import Basic

from patterns import config, processes
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, ChannelClosed, Requester
from patterns.reqrep.replier import GRACE_S, Answer, Handler, ReplierCounts, answer

log = logging.getLogger(__name__)

REQUESTS_QUEUE = "requests_queue"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
JSON = "application/json"
ERROR = "error"  # the `type` property of an error reply; its body is {"error": "..."}


class AmqpRequester(Requester):
    def __init__(self, url: str, queue: str, direct: bool, timeout: float) -> None:
        super().__init__(timeout)
        self.transport = "amqp-direct" if direct else "amqp"
        self.url, self.queue, self.direct = url, queue, direct
        self.reply_to = DIRECT_REPLY_TO
        self.connection: aiormq.abc.AbstractConnection | None = None

    async def open(self) -> None:
        self.connection = await aiormq.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=False)
        # declared here too (durable, as amqplib does), so requests wait for a replier
        await self.channel.queue_declare(self.queue, durable=True)
        if not self.direct:
            declared = await self.channel.queue_declare("", exclusive=True, auto_delete=True)
            assert declared.queue is not None
            self.reply_to = declared.queue
        await self.channel.basic_consume(self.reply_to, self._on_reply, no_ack=True)
        self.channel.closing.add_done_callback(self._on_channel_closed)

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        properties = Basic.Properties(
            content_type=JSON,
            correlation_id=request_id,
            reply_to=self.reply_to,
            expiration=str(max(1, int(timeout * 1000))),
        )
        publish = self.channel.basic_publish(
            wire.dumps(data), routing_key=self.queue, properties=properties, wait=False
        )
        try:
            if self.connection is not None and self.connection.write_queue.full():
                await self._wait_to_send(publish, future)  # the broker is slow to take more
            else:
                await publish
        except AMQPError as error:
            self._close(f"the AMQP channel is closed: {error!r}")
            raise ChannelClosed(request_id, self.closed or "") from None

    async def _on_reply(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        try:
            body = wire.loads(message.body)
        except MalformedMessage as problem:
            self._malformed(message.body, str(problem))
            return
        if properties.message_type == ERROR:
            reason = body.get("error") if isinstance(body, dict) else body
            self._settle(properties.correlation_id, error=str(reason))
        else:
            self._settle(properties.correlation_id, body)

    def _on_channel_closed(self, closing: asyncio.Future) -> None:
        reason = "closed" if closing.cancelled() else repr(closing.exception() or "closed")
        self._close(f"the AMQP channel to {config.redacted(self.url)} closed: {reason}")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        if self.connection is not None:
            await self.connection.close()


@contextlib.asynccontextmanager
async def requester(
    url: str = config.AMQP_URL,
    queue: str = REQUESTS_QUEUE,
    direct: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> AsyncIterator[AmqpRequester]:
    """A requester sending to `queue`, its replies to its own queue (or direct reply-to)."""
    amqp_requester = AmqpRequester(url, queue, direct, timeout)
    try:
        await amqp_requester.open()
        yield amqp_requester
    finally:
        await amqp_requester.aclose()


# ---- the replier: python -m patterns.reqrep.replier --transport amqp --------------------


async def serve(
    handler: Handler, queue: str = REQUESTS_QUEUE, prefetch: int = 100, url: str = config.AMQP_URL
) -> None:
    """Consume `queue`; publish each reply to its `reply_to`, then ack the request."""
    counts = ReplierCounts()
    connection = await aiormq.connect(url)
    # publisher confirms: a mandatory reply that cannot be routed comes back as PublishError
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare(queue, durable=True)
    await channel.basic_qos(prefetch_count=prefetch)

    working: set[asyncio.Task] = set()

    async def on_request(message: DeliveredMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        working.add(task)
        try:
            await handle(message)
        finally:
            working.discard(task)

    async def handle(message: DeliveredMessage) -> None:
        properties = message.header.properties
        counts.redelivered += bool(message.delivery.redelivered)
        if properties.reply_to:
            result = await reply(message.body)
            body, kind = reply_body(result, counts)
            direct = properties.reply_to.startswith(DIRECT_REPLY_TO)
            try:
                await channel.basic_publish(
                    body,
                    routing_key=properties.reply_to,
                    properties=Basic.Properties(
                        content_type=JSON,
                        correlation_id=properties.correlation_id,
                        message_type=kind,
                    ),
                    mandatory=not direct,
                )
            except PublishError:
                counts.undeliverable += 1  # returned: its reply queue is gone
        else:
            counts.refused += 1
            log.warning("a request without reply_to, nobody to answer: %.80r", message.body)
        # queued behind the reply on the same channel: the broker sees the reply first
        await channel.basic_ack(message.delivery.delivery_tag, wait=False)

    async def reply(body: bytes) -> Answer:
        try:
            data = wire.loads(body)
        except MalformedMessage as problem:
            return None, str(problem)
        result = answer(handler, data)
        return result if isinstance(result, tuple) else await result

    try:
        consumer = await channel.basic_consume(queue, on_request)
        processes.report("ready", queue=queue)
        await channel.closing
    finally:
        if not channel.is_closed:  # take no more requests; answer those in hand
            with contextlib.suppress(AMQPError):
                await channel.basic_cancel(consumer.consumer_tag)
            if working:
                await asyncio.wait(working, timeout=GRACE_S)
        await connection.close()
        processes.report("result", **vars(counts))


def reply_body(result: Answer, counts: ReplierCounts) -> tuple[bytes, str | None]:
    """The reply's body and `type` property: the data, or {"error": ...} of type "error"."""
    data, problem = result
    if problem is None:
        try:
            body = wire.dumps(data)
        except (TypeError, ValueError) as error:
            problem = f"the reply is not JSON: {error}"
        else:
            counts.answered += 1
            return body, None
    counts.refused += 1
    return wire.dumps({"error": problem}), ERROR


async def delete_queue(name: str, url: str = config.AMQP_URL) -> None:
    """Delete a queue this code declared (a test's or a benchmark's requests queue)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()
