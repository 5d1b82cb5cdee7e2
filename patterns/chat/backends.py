"""How chat instances share messages: five backends behind one small interface.

A backend publishes what this instance's clients send and yields, batch by batch, what
every instance's clients sent (this one's included). Some also keep a history for clients
that join later. Each is a thin layer over a `patterns.pubsub` module.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import aiohttp
import zmq.asyncio

from patterns import config
from patterns.pubsub import amqp_fanout, redis_pubsub, redis_streams, zmq_peers
from patterns.pubsub.retry import OnState, log_state

HISTORY = 1_000  # at most this many past messages for a client that joins
HISTORY_URL = "http://127.0.0.1:8090/"  # WIRE.md: the history service of the AMQP backend

log = logging.getLogger("patterns.chat")


class Backend:
    """In-memory, one instance only (the book's first sample): nobody else hears it."""

    name: ClassVar[str] = "local"
    # a client must not get a message both in its history and live; True where the two
    # come from different places and may overlap (see ChatServer.join)
    history_may_overlap: ClassVar[bool] = False

    def __init__(self, topic: str | None = None, on_state: OnState = log_state) -> None:
        self.topic = topic
        self.on_state = on_state
        self._queue: asyncio.Queue[Sequence[bytes]] = asyncio.Queue()

    async def start(self, http_port: int) -> dict:
        """Connect and subscribe; return what the "ready" report should say about it."""
        return {}

    async def stop(self) -> None:
        pass

    async def publish(self, messages: Sequence[bytes]) -> None:
        self._queue.put_nowait(messages)

    async def batches(self) -> AsyncIterator[Sequence[bytes]]:
        while True:
            yield await self._queue.get()

    def history_point(self) -> str | None:
        """Where live delivery stands now (for a history that must end exactly there)."""
        return None

    async def history(self, upto: str | None) -> list[bytes]:
        return []


class Relayed(Backend):
    """A backend over a `patterns.pubsub` publisher and subscriber: it publishes through the
    one and yields what the other delivers (subclasses connect both in `start`)."""

    publisher: Any
    subscriber: Any

    async def stop(self) -> None:
        await self.subscriber.__aexit__(None, None, None)
        await self.publisher.aclose()

    async def publish(self, messages: Sequence[bytes]) -> None:
        await self.publisher.publish(messages)

    def batches(self) -> AsyncIterator[Sequence[bytes]]:
        return self.subscriber.batches()


class RedisPubSub(Relayed):
    name = "redis"

    async def start(self, http_port: int) -> dict:
        topic = self.topic or redis_pubsub.CHANNEL
        self.publisher = redis_pubsub.Publisher(config.REDIS_URL, topic)
        self.subscriber = await redis_pubsub.Subscriber(
            config.REDIS_URL, topic, self.on_state
        ).__aenter__()
        return {"channel": topic}


class ZeroMQ(Relayed):
    """Peer to peer: bind a PUB socket, connect a SUB socket to each peer's, and to our own
    (so this instance's clients hear their messages the way everyone else does).

    An instance is ready when every peer it was given has subscribed to it; started one
    at a time, the first ones wait for the others (their pages work meanwhile)."""

    name = "zmq"

    def __init__(
        self,
        topic: str | None = None,
        on_state: OnState = log_state,
        pub: str = "tcp://127.0.0.1:5000",
        subs: Sequence[str] = (),
    ) -> None:
        super().__init__(topic, on_state)
        self.pub = pub
        self.subs = subs

    async def start(self, http_port: int) -> dict:
        topic = (self.topic or zmq_peers.TOPIC.decode()).encode()
        self.context = zmq.asyncio.Context()
        self.publisher = zmq_peers.Publisher(self.context, self.pub, topic)
        peers = [self.publisher.endpoint, *self.subs]
        self.subscriber = zmq_peers.Subscriber(self.context, peers, topic, on_state=self.on_state)
        # The slow-joiner handshake: ready once our own SUB and every peer's has subscribed
        # to us, so nothing a client sends from then on misses a peer.
        self.on_state("waiting", f"for {len(peers)} subscriptions (ours and our peers')")
        await self.publisher.wait_for_subscribers(len(peers))
        self._peers = asyncio.create_task(self._watch_subscriptions())
        return {"pub": self.publisher.endpoint, "subs": list(self.subs)}

    async def _watch_subscriptions(self) -> None:
        while True:
            subscribed = await self.publisher.next_subscription()
            change = "subscribed to" if subscribed else "unsubscribed from"
            self.on_state("peer", f"a peer {change} {self.publisher.endpoint}")

    async def stop(self) -> None:
        self._peers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._peers
        await self.subscriber.aclose()
        self.publisher.close()
        self.context.term()


class Amqp(Relayed):
    """A fanout exchange; this instance's exclusive queue `<exchange>_srv_<port>`; the
    history from the history service over HTTP (`python -m patterns.chat.history`)."""

    name = "amqp"
    history_may_overlap = True

    def __init__(
        self, topic: str | None = None, on_state: OnState = log_state, history_url: str = ""
    ) -> None:
        super().__init__(topic, on_state)
        self.history_url = history_url or HISTORY_URL

    async def start(self, http_port: int) -> dict:
        exchange = self.topic or amqp_fanout.EXCHANGE
        queue = f"{exchange}_srv_{http_port}"
        self.publisher = amqp_fanout.Publisher(config.AMQP_URL, exchange)
        self.subscriber = await amqp_fanout.Subscriber(
            config.AMQP_URL, queue, exchange, on_state=self.on_state
        ).__aenter__()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return {"exchange": exchange, "queue": queue, "history_url": self.history_url}

    async def stop(self) -> None:
        await self.http.close()
        await super().stop()

    async def history(self, upto: str | None) -> list[bytes]:
        """The last HISTORY messages the history service has stored (none if it is down)."""
        try:
            async with self.http.get(self.history_url, params={"last": HISTORY}) as response:
                response.raise_for_status()
                stored = await response.json(loads=json.loads)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("no history from %s: %s", self.history_url, error)
            return []
        return [str(text).encode() for text in stored[-HISTORY:]]


class RedisStreams(Relayed):
    """One stream for history and live delivery; the history ends where live delivery
    starts (the reader's cursor), so a joining client gets every message exactly once."""

    name = "streams"

    def __init__(
        self, topic: str | None = None, on_state: OnState = log_state, maxlen: int = 0
    ) -> None:
        super().__init__(topic, on_state)
        self.maxlen = maxlen or redis_streams.MAXLEN

    async def start(self, http_port: int) -> dict:
        stream = self.topic or redis_streams.STREAM
        self.publisher = redis_streams.Publisher(config.REDIS_URL, stream, self.maxlen)
        self.subscriber = await redis_streams.Subscriber(
            config.REDIS_URL, stream, on_state=self.on_state
        ).__aenter__()
        return {"stream": stream, "maxlen": self.maxlen}

    def history_point(self) -> str | None:
        return self.subscriber.cursor

    async def history(self, upto: str | None) -> list[bytes]:
        return await self.subscriber.history(HISTORY, upto)


BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (Backend, RedisPubSub, ZeroMQ, Amqp, RedisStreams)
}
