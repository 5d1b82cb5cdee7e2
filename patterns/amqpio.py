"""Awaitable AMQP over pika's asyncio adapter: what the hashsum cracker's AMQP modules use.

pika's `AsyncioConnection` runs on the event loop and reports everything through
callbacks: a delivery is a plain function call, made while the connection reads the
socket. That is why the task modules use it rather than aiormq, which the other AMQP
modules use: aiormq passes each delivery's three frames through an asyncio queue to its
channel's task and then runs the consumer callback in a task of its own, which costs a
worker that consumes thousands of tasks a second (`python -m patterns.bench amqpclients`:
aiormq 22,875 messages/s against 54,472 through pika's adapter, median of 3 rounds).

What this layer adds to pika, and nothing more:

* an awaitable for each method with a reply (declare, bind, qos, consume, get, close);
* a future per publish, which the broker's confirm settles (True: ack, False: nack), the
  multiple confirms included; and, for what must not wait a turn of the event loop for
  it (a worker's ack), a callback called as the confirm is read;
* what pika leaves hanging: when a channel closes (the broker closed it, or the
  connection went), every awaitable still pending on it fails with the reason, so
  nobody waits for a reply that will never come; `closing` futures for the rest.

A consumer callback runs inside pika's read of the socket: it must be quick and must not
raise (an exception there takes the connection down).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

ERRORS = (pika.exceptions.AMQPError, ConnectionError, OSError)  # what a lost broker raises
Properties = pika.BasicProperties

logging.getLogger("pika").setLevel(logging.WARNING)  # it logs every connect and close


OnConfirm = Callable[[bool], None]


class Delivery(NamedTuple):
    """One consumed (or got) message."""

    body: bytes
    delivery_tag: int
    redelivered: bool
    headers: dict[str, Any] | None


class Closed(ConnectionError):
    """The channel or the connection closed while a reply was awaited."""


def _error(reason: object) -> BaseException:
    return reason if isinstance(reason, BaseException) else Closed(str(reason))


def _retrieved(future: asyncio.Future) -> None:
    """Mark a future's exception as seen: a confirm nobody awaits any more fails quietly."""
    if not future.cancelled():
        future.exception()


async def connect(url: str) -> "Connection":
    """Open a connection; raise (an AMQPError or OSError) if the broker cannot be reached."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    closing: asyncio.Future[object] = loop.create_future()

    def on_open(_: AsyncioConnection) -> None:
        if not opened.done():
            opened.set_result(None)

    def on_open_error(_: AsyncioConnection, error: object) -> None:
        if not opened.done():
            opened.set_exception(_error(error))

    def on_close(_: AsyncioConnection, reason: object) -> None:
        if not closing.done():
            closing.set_result(reason)

    parameters = pika.URLParameters(url)
    raw = AsyncioConnection(parameters, on_open, on_open_error, on_close, custom_ioloop=loop)
    try:
        await opened
    except BaseException:  # refused, or the caller gave up waiting: no half-open socket
        if not (raw.is_closing or raw.is_closed):
            with contextlib.suppress(pika.exceptions.AMQPError):
                raw.close()
        raise
    return Connection(raw, closing)


class Connection:
    def __init__(self, raw: AsyncioConnection, closing: asyncio.Future) -> None:
        self.raw = raw
        self.closing = closing  # done, with the reason, once the connection is closed

    @property
    def is_open(self) -> bool:
        return bool(self.raw.is_open)

    async def channel(self, confirms: bool = True) -> "Channel":
        """A new channel; with `confirms`, in confirm mode (every publish gets a future)."""
        channel = Channel(self)
        await channel.opened
        if confirms:
            await channel._rpc(channel.raw.confirm_delivery, channel._on_confirm)
            channel.confirming = True
        return channel

    async def close(self) -> None:
        if not (self.raw.is_closing or self.raw.is_closed):
            self.raw.close()
        await asyncio.shield(self.closing)


class Channel:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.closing: asyncio.Future[object] = self.loop.create_future()  # done once closed
        self.confirming = False
        self._pending: set[asyncio.Future] = set()  # replies awaited
        self._unconfirmed: dict[int, tuple[asyncio.Future[bool], OnConfirm | None]] = {}
        self._published = 0
        self._got: asyncio.Future[Delivery | None] | None = None
        self.opened: asyncio.Future[None] = self._future()
        self.raw = raw = connection.raw.channel(
            on_open_callback=lambda _: self._settle(self.opened, None)
        )
        raw.add_on_close_callback(self._on_close)
        raw.add_callback(self._on_get_empty, [pika.spec.Basic.GetEmpty], one_shot=False)

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    # ---- replies --------------------------------------------------------------------------

    def _future(self) -> asyncio.Future:
        future = self.loop.create_future()
        if self.closing.done():
            future.set_exception(Closed(f"the channel is closed: {self.closing.result()}"))
            return future
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    @staticmethod
    def _settle(future: asyncio.Future, value: object) -> None:
        if not future.done():
            future.set_result(value)

    async def _rpc(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method that takes a `callback` for its reply; return the reply."""
        future = self._future()
        method(*args, callback=lambda reply: self._settle(future, reply), **kwargs)
        return await future

    def _on_close(self, _: pika.channel.Channel, reason: object) -> None:
        self._settle(self.closing, reason)
        error = _error(reason)
        for future in [*self._pending, *(future for future, _ in self._unconfirmed.values())]:
            if not future.done():
                future.set_exception(error)
        self._unconfirmed.clear()

    # ---- declaring ------------------------------------------------------------------------

    async def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> pika.spec.Queue.DeclareOk:
        """Declare a queue (or, `passive`, ask after one): its name and message count."""
        reply = await self._rpc(
            self.raw.queue_declare,
            queue,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
        )
        return reply.method

    async def exchange_declare(self, exchange: str, exchange_type: str = "direct") -> None:
        await self._rpc(self.raw.exchange_declare, exchange, exchange_type=exchange_type)

    async def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None) -> None:
        await self._rpc(self.raw.queue_bind, queue, exchange, routing_key=routing_key)

    async def queue_delete(self, queue: str) -> None:
        await self._rpc(self.raw.queue_delete, queue)

    async def exchange_delete(self, exchange: str) -> None:
        await self._rpc(self.raw.exchange_delete, exchange)

    async def basic_qos(self, prefetch_count: int) -> None:
        await self._rpc(self.raw.basic_qos, prefetch_count=prefetch_count)

    # ---- publishing -----------------------------------------------------------------------

    def basic_publish(
        self,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        on_confirm: OnConfirm | None = None,
    ) -> asyncio.Future[bool]:
        """Publish now; the future is the broker's confirm (True: stored, False: refused).
        Without confirm mode it is done at once.

        `on_confirm(ok)` is called with the same answer as soon as the confirm is read: a
        turn of the event loop before the future's awaiters and callbacks run. It is not
        called if the channel closes first (the future then says why), and must not raise.
        """
        future = self.loop.create_future()
        self.raw.basic_publish(exchange, routing_key, body, properties)  # raises if closed
        if not self.confirming:
            future.set_result(True)
            if on_confirm is not None:
                on_confirm(True)
            return future
        self._published += 1
        self._unconfirmed[self._published] = (future, on_confirm)
        future.add_done_callback(_retrieved)
        return future

    async def wait_for_confirms(self) -> bool:
        """Wait for the confirm of every publish so far: True if the broker stored them all."""
        return all(await asyncio.gather(*[future for future, _ in self._unconfirmed.values()]))

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        unconfirmed = self._unconfirmed
        if not method.multiple:
            if tag in unconfirmed:
                self._confirmed(*unconfirmed.pop(tag), ok)
            return
        while unconfirmed:  # in publish order: every one up to `tag`
            number = next(iter(unconfirmed))
            if number > tag:
                break
            self._confirmed(*unconfirmed.pop(number), ok)

    @staticmethod
    def _confirmed(future: asyncio.Future[bool], on_confirm: OnConfirm | None, ok: bool) -> None:
        if not future.done():
            future.set_result(ok)
        if on_confirm is not None:
            on_confirm(ok)

    # ---- consuming ------------------------------------------------------------------------

    async def basic_consume(
        self, queue: str, on_message: Callable[[Delivery], None], no_ack: bool = False
    ) -> str:
        """Call `on_message` with each delivery (quick, never raising); the consumer tag."""

        def deliver(
            _: pika.channel.Channel,
            method: pika.spec.Basic.Deliver,
            properties: pika.BasicProperties,
            body: bytes,
        ) -> None:
            on_message(Delivery(body, method.delivery_tag, method.redelivered, properties.headers))

        reply = await self._rpc(self.raw.basic_consume, queue, deliver, auto_ack=no_ack)
        return reply.method.consumer_tag

    def on_cancel(self, callback: Callable[[object], None]) -> None:
        """Call `callback` if the broker cancels a consumer (its queue was deleted, say)."""
        self.raw.add_on_cancel_callback(callback)

    async def basic_cancel(self, consumer_tag: str) -> None:
        await self._rpc(self.raw.basic_cancel, consumer_tag)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.raw.basic_ack(delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self.raw.basic_nack(delivery_tag, requeue=requeue)

    async def basic_get(self, queue: str, no_ack: bool = False) -> Delivery | None:
        """The next message of `queue`, or None if it is empty."""
        future = self._got = self._future()

        def got(
            _: pika.channel.Channel,
            method: pika.spec.Basic.GetOk,
            properties: pika.BasicProperties,
            body: bytes,
        ) -> None:
            delivery = Delivery(body, method.delivery_tag, method.redelivered, properties.headers)
            self._settle(future, delivery)

        self.raw.basic_get(queue, got, auto_ack=no_ack)
        try:
            return await future
        finally:
            self._got = None

    def _on_get_empty(self, _: pika.frame.Method) -> None:
        if self._got is not None:
            self._settle(self._got, None)

    async def close(self) -> None:
        if not (self.raw.is_closing or self.raw.is_closed):
            self.raw.close()
        await asyncio.shield(self.closing)
