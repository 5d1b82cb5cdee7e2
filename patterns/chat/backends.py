"""How chat instances share messages: five backends behind one small interface.

A backend publishes what this instance's clients send, one message at a time, and yields
every message any instance's clients sent (this one's included), in order. Some also keep
a history for clients that join later. Each is a few lines over a `patterns.pubsub`
module, the idiomatic one: the chat runs the code the notebooks show.

A backend reports what happens to its connection through `on_event`; the server tells
its clients when an event means messages may have been missed (`MAY_HAVE_MISSED`).
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import aiohttp
import zmq
import zmq.asyncio
from aio_pika.exceptions import ChannelInvalidStateError

from patterns import clients
from patterns.events import OnEvent, log_event
from patterns.pubsub import amqp_fanout, redis_pubsub, redis_streams, zmq_peers

HISTORY = 1_000  # at most this many past messages for a client that joins
HISTORY_URL = "http://127.0.0.1:8090/"  # docs/wire.md: the history service of the AMQP backend
# events after which messages may have been missed: the instance was cut off for a while
MAY_HAVE_MISSED = frozenset({"resubscribed", "reconnected", "trimmed"})

log = logging.getLogger("patterns.chat")


class Backend:
    """In-memory, one instance only (the book's first sample): nobody else hears it."""

    name: ClassVar[str] = "local"
    # a client must not get a message both in its history and live; True where the two
    # come from different places and may overlap (see Client.release)
    history_may_overlap: ClassVar[bool] = False

    def __init__(self, topic: str | None = None, on_event: OnEvent = log_event) -> None:
        self.topic = topic
        self.on_event = on_event
        self.stack = contextlib.AsyncExitStack()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self, http_port: int) -> dict:
        """Connect and subscribe; return what the "ready" report should say about it."""
        return {}

    async def stop(self) -> None:
        await self.stack.aclose()

    async def publish(self, message: bytes) -> None:
        self._queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[bytes]:
        while True:
            yield await self._queue.get()

    def history_point(self) -> bytes | None:
        """Where live delivery stands now (for a history that must end exactly there)."""
        return None

    async def history(self, upto: bytes | None) -> list[bytes]:
        return []


class RedisPubSub(Backend):
    name = "redis"

    async def start(self, http_port: int) -> dict:
        self.channel = self.topic or redis_pubsub.CHANNEL
        self.redis = await self.stack.enter_async_context(clients.redis())
        subscribed = redis_pubsub.subscription(self.redis, self.channel, self.on_event)
        self._messages = await self.stack.enter_async_context(subscribed)
        return {"channel": self.channel}

    async def publish(self, message: bytes) -> None:
        await redis_pubsub.publish(self.redis, message, self.channel)

    def messages(self) -> AsyncIterator[bytes]:
        return self._messages


class ZeroMQ(Backend):
    """Peer to peer: bind a PUB socket, connect a SUB socket to each peer's, and to our own
    (so this instance's clients hear their messages the way everyone else does).

    An instance is ready when every peer it was given has subscribed to it; started one
    at a time, the first ones wait for the others (their pages work meanwhile)."""

    name = "zmq"

    def __init__(
        self,
        topic: str | None = None,
        on_event: OnEvent = log_event,
        pub: str = "tcp://127.0.0.1:5000",
        subs: Sequence[str] = (),
    ) -> None:
        super().__init__(topic, on_event)
        self.pub = pub
        self.subs = subs

    async def start(self, http_port: int) -> dict:
        self.prefix = (self.topic or zmq_peers.TOPIC.decode()).encode()
        context = zmq.asyncio.Context()
        self.stack.callback(context.destroy, linger=0)
        self.publisher = zmq_peers.bind_publisher(context, self.pub)
        endpoint = self.publisher.getsockopt_string(zmq.LAST_ENDPOINT)
        peers = [endpoint, *self.subs]
        subscribed = zmq_peers.subscription(context, peers, self.prefix, on_event=self.on_event)
        self._messages = await self.stack.enter_async_context(subscribed)
        # The slow-joiner handshake: ready once our own SUB and every peer's has subscribed
        # to us, so nothing a client sends from then on misses a peer.
        self.on_event("waiting", subscriptions=len(peers), of="ours and our peers'")
        await zmq_peers.wait_for_subscribers(self.publisher, len(peers))
        watching = asyncio.create_task(self._watch_subscriptions())
        self.stack.push_async_callback(cancelled, watching)
        return {"pub": endpoint, "subs": list(self.subs)}

    async def _watch_subscriptions(self) -> None:
        while True:
            subscribed = (await self.publisher.recv())[:1] == b"\x01"
            self.on_event("peer", subscribed=subscribed)

    async def publish(self, message: bytes) -> None:
        await zmq_peers.publish(self.publisher, message, self.prefix)

    def messages(self) -> AsyncIterator[bytes]:
        return self._messages


class Amqp(Backend):
    """A fanout exchange; this instance's exclusive queue `<exchange>_srv_<port>`; the
    history from the history service over HTTP (`python -m patterns.chat history`)."""

    name = "amqp"
    history_may_overlap = True

    def __init__(
        self, topic: str | None = None, on_event: OnEvent = log_event, history_url: str = ""
    ) -> None:
        super().__init__(topic, on_event)
        self.history_url = history_url or HISTORY_URL

    async def start(self, http_port: int) -> dict:
        exchange = self.topic or amqp_fanout.EXCHANGE
        queue = f"{exchange}_srv_{http_port}"
        connection = await clients.amqp()
        self.stack.push_async_callback(connection.close)
        self.channel = await connection.channel()
        self.exchange = await amqp_fanout.declare_exchange(self.channel, exchange)
        subscribed = amqp_fanout.subscription(connection, queue, exchange, on_event=self.on_event)
        self._messages = await self.stack.enter_async_context(subscribed)
        timeout = aiohttp.ClientTimeout(total=5)
        self.http = await self.stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        return {"exchange": exchange, "queue": queue, "history_url": self.history_url}

    async def publish(self, message: bytes) -> None:
        """Once confirmed; while the connection is lost, once it is back (at least once)."""
        while True:
            try:
                return await amqp_fanout.publish(self.exchange, message)
            except (*clients.AMQP_LOST, ChannelInvalidStateError):
                await self.channel.ready()  # the robust connection declares it all again

    def messages(self) -> AsyncIterator[bytes]:
        return self._messages

    async def history(self, upto: bytes | None) -> list[bytes]:
        """The last HISTORY messages the history service has stored (none if it is down)."""
        try:
            async with self.http.get(self.history_url, params={"last": HISTORY}) as response:
                response.raise_for_status()
                stored = await response.json(loads=json.loads)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("no history from %s: %s", self.history_url, error)
            return []
        return [str(text).encode() for text in stored[-HISTORY:]]


class RedisStreams(Backend):
    """One stream for history and live delivery; the history ends where live delivery
    starts (the reader's cursor), so a joining client gets every message exactly once."""

    name = "streams"

    def __init__(
        self, topic: str | None = None, on_event: OnEvent = log_event, maxlen: int = 0
    ) -> None:
        super().__init__(topic, on_event)
        self.maxlen = maxlen or redis_streams.MAXLEN

    async def start(self, http_port: int) -> dict:
        self.stream = self.topic or redis_streams.STREAM
        self.redis = await self.stack.enter_async_context(clients.redis())
        self.cursor = await redis_streams.last_id(self.redis, self.stream)
        count = min(redis_streams.COUNT, self.maxlen)  # a full read can tell of trimming
        subscribed = redis_streams.subscription(
            self.redis, self.stream, self.cursor, count, self.on_event
        )
        self._entries = await self.stack.enter_async_context(subscribed)
        return {"stream": self.stream, "maxlen": self.maxlen}

    async def publish(self, message: bytes) -> None:
        await redis_streams.publish(self.redis, message, self.stream, self.maxlen)

    async def messages(self) -> AsyncIterator[bytes]:
        async for entry_id, message in self._entries:
            self.cursor = entry_id
            yield message

    def history_point(self) -> bytes | None:
        return self.cursor

    async def history(self, upto: bytes | None) -> list[bytes]:
        return await redis_streams.history(self.redis, upto or self.cursor, HISTORY, self.stream)


async def cancelled(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (Backend, RedisPubSub, ZeroMQ, Amqp, RedisStreams)
}
