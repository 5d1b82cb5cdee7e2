"""The return address over AMQP (aio-pika): each request says where its reply goes.

Requests go to one durable queue, `requests_queue` (declared as the book's samples declare
it), that any number of repliers consume: they compete, and none of them knows the
requesters. Each request carries two properties: `reply_to`, the requester's own reply
queue (exclusive to its connection), and `correlation_id`, its id. A replier publishes the
reply to the `reply_to` queue through the default exchange with the same
`correlation_id`, and acks the request once the broker has confirmed the reply, so a
replier that dies before replying leaves the request to another one.

    python -m patterns.reqrep replier --transport amqp

    async with amqp.requester() as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

With `direct=True` the requester uses RabbitMQ's direct reply-to instead: `reply_to` is the
pseudo-queue `amq.rabbitmq.reply-to`, and the broker hands replies straight to the
requester's channel, with no reply queue to declare or delete.

What it guarantees, and how it fails:

* a request expires (`expiration`) when its requester stops waiting, so a replier that
  was down does not work through requests that nobody wants any more;
* the reply queue lives as long as the requester's connection: when the connection drops,
  every pending request fails at once (`ChannelClosed`). aio-pika's robust connection
  comes back by itself and declares the reply queue again, so later requests work;
* the replier answers every request that has a `reply_to`: the sum, or an error reply
  (property `type` "error", body `{"error": "..."}`) for one it cannot read or handle. One
  without a `reply_to` cannot be answered: it is logged, counted (`skipped`) and acked;
* replies are `mandatory`: one addressed to a reply queue that is gone comes back to the
  replier, which counts it (`undeliverable`) instead of losing it silently. Direct
  reply-to treats its pseudo-queue as unroutable for `mandatory`, so those replies go
  without it, and RabbitMQ drops them silently if their requester is gone.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError

from patterns import clients, config
from patterns.events import OnEvent, log_event
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import (
    DEFAULT_TIMEOUT_S,
    ChannelClosed,
    Requester,
    RequestTimeout,
)
from patterns.reqrep.handler import GRACE_S, Answer, Handler, ReplierCounts, answer

log = logging.getLogger(__name__)

REQUESTS_QUEUE = "requests_queue"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
PREFETCH = 100  # requests a replier holds at once (the book's replier takes them all)
JSON = "application/json"
ERROR = "error"  # the `type` property of an error reply; its body is {"error": "..."}


class AmqpRequester(Requester):
    def __init__(
        self,
        url: str | None,
        queue: str,
        direct: bool,
        timeout: float = DEFAULT_TIMEOUT_S,
        patience: float | None = None,
    ) -> None:
        super().__init__(timeout)
        self.transport = "amqp-direct" if direct else "amqp"
        self.url, self.queue, self.direct = url or config.AMQP_URL, queue, direct
        self.patience = patience
        self.reply_to = DIRECT_REPLY_TO

    async def open(self) -> None:
        self.connection = await clients.amqp(self.url, self.patience)
        self.connection.close_callbacks.add(self._on_connection_lost)
        self.channel = await self.connection.channel()  # publisher confirms: on
        # declared as the repliers declare it, so that requests wait for one
        await self.channel.declare_queue(self.queue, durable=True)
        if self.direct:  # consumed before any request names it, as RabbitMQ requires
            replies = await self.channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        else:
            replies = await self.channel.declare_queue(exclusive=True)
            self.reply_to = replies.name
        await replies.consume(self._on_reply, no_ack=True)

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        request = aio_pika.Message(
            wire.dumps(data),
            content_type=JSON,
            correlation_id=request_id,
            reply_to=self.reply_to,
            expiration=timeout,  # nobody waits for it after that: the broker drops it
        )
        try:  # returns once the broker has confirmed the request
            await self.channel.default_exchange.publish(
                request, routing_key=self.queue, timeout=timeout
            )
        except TimeoutError:  # the broker held it back (a memory alarm, say) for too long
            raise RequestTimeout(request_id, timeout) from None
        except (AMQPError, ChannelInvalidStateError, *clients.AMQP_LOST) as error:
            # the connection is down (it comes back by itself), or the broker refused it
            raise ChannelClosed(request_id, f"RabbitMQ did not take it: {error!r}") from None

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            body = wire.loads(message.body)
        except MalformedMessage as problem:
            self._malformed(message.body, str(problem))
            return
        if message.type == ERROR:
            reason = body.get("error") if isinstance(body, dict) else body
            self._settle(message.correlation_id, error=str(reason))
        else:
            self._settle(message.correlation_id, body)

    def _on_connection_lost(self, _: object, error: BaseException | None) -> None:
        if isinstance(error, clients.BrokerLost):  # for longer than the patience: for good
            self._close(str(error))
        elif error is not None and not isinstance(error, asyncio.CancelledError):
            # the reply queue went with the connection: no reply to a pending request can come
            self._fail_pending(f"the connection to RabbitMQ was lost: {clients.reason(error)}")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        if hasattr(self, "connection"):
            await self.connection.close()


@contextlib.asynccontextmanager
async def requester(
    url: str | None = None,
    queue: str = REQUESTS_QUEUE,
    direct: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    patience: float | None = None,
) -> AsyncIterator[AmqpRequester]:
    """A requester sending to `queue`, its replies to its own queue (or direct reply-to);
    it waits `patience` seconds at most for RabbitMQ (default: `config.GIVE_UP_AFTER_S`)."""
    amqp_requester = AmqpRequester(url, queue, direct, timeout, patience)
    try:
        await amqp_requester.open()
        yield amqp_requester
    finally:
        await amqp_requester.aclose()


async def serve(
    handler: Handler,
    queue: str = REQUESTS_QUEUE,
    prefetch: int = PREFETCH,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> None:
    """Consume `queue`, at most `prefetch` requests at a time; answer each to its `reply_to`."""
    counts, answering = ReplierCounts(), set[asyncio.Task]()
    async with await clients.amqp(url) as connection:
        channel = await connection.channel(on_return_raises=True)  # a returned reply raises
        await channel.set_qos(prefetch_count=prefetch)
        requests = await channel.declare_queue(queue, durable=True)
        on_event("ready", queue=queue)
        try:
            async with requests.iterator() as deliveries:
                async for message in deliveries:  # each answered in a task: out of order
                    task = asyncio.create_task(reply(channel, handler, message, counts))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
        finally:  # take no more requests; answer those in hand
            if answering:
                await asyncio.wait(answering, timeout=GRACE_S)
            for task in answering:
                task.cancel()  # their requests go back to the queue, for another replier
            on_event("result", **vars(counts))


async def reply(
    channel: AbstractChannel,
    handler: Handler,
    message: AbstractIncomingMessage,
    counts: ReplierCounts,
) -> None:
    """Answer one request, then ack it; requeue it if that fails (the replier stopping)."""
    async with message.process(requeue=True):
        counts.redelivered += message.redelivered
        if not message.reply_to:
            counts.skipped += 1
            log.warning("a request without reply_to, nobody to answer: %.80r", message.body)
            return
        body, kind = reply_body(await answered(handler, message.body), counts)
        response = aio_pika.Message(
            body, content_type=JSON, correlation_id=message.correlation_id, type=kind
        )
        direct = message.reply_to.startswith(DIRECT_REPLY_TO)
        try:  # returns once the broker has confirmed the reply
            await channel.default_exchange.publish(
                response, routing_key=message.reply_to, mandatory=not direct
            )
        except DeliveryError:  # returned (its reply queue is gone) or refused
            counts.undeliverable += 1


async def answered(handler: Handler, body: bytes) -> Answer:
    """The handler's answer to a request body, or what makes the body unreadable."""
    try:
        data = wire.loads(body)
    except MalformedMessage as problem:
        return None, str(problem)
    result = answer(handler, data)
    return result if isinstance(result, tuple) else await result


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


async def delete_queue(name: str, url: str | None = None) -> None:
    """Delete a queue this code declared (a test's or a benchmark's requests queue)."""
    async with await clients.amqp(url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
