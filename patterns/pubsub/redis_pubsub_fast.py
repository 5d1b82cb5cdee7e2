"""Redis Pub/Sub, tuned for throughput: `redis_pubsub` with the per-message costs taken out.

Same channel, same guarantees and losses (see `redis_pubsub`). What changes:

* publishing: a batch goes in one pipeline, one round trip for all of it, where
  `redis_pubsub.publish` waits for Redis's answer to each message;
* subscribing: the subscriber reads the socket itself and parses with hiredis (the C
  parser redis-py also uses): one read takes every message that has arrived, and each is
  parsed without an `await` or redis-py's layers. Batches, not single messages.

It reconnects (with `clients.BACKOFF`) and subscribes again by itself, as redis-py does,
and reports "resubscribed" then. Notebook 02's "Going faster" measures it side by side
with `redis_pubsub` and with the raw loop.
"""

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis

from patterns import clients, config
from patterns.events import OnEvent, log_event
from patterns.pubsub.redis_pubsub import CHANNEL

READ_BYTES = 1 << 16
IDLE_S = 30.0  # silent this long: PING; silent twice as long: the connection is dead


async def publish_many(
    redis: aioredis.Redis, messages: Sequence[bytes], channel: str = CHANNEL
) -> None:
    """PUBLISH each message, the whole batch in one round trip (a pipeline, no MULTI)."""
    async with redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.publish(channel, message)
        await pipe.execute()


@contextlib.asynccontextmanager
async def subscription(
    url: str | None = None, channel: str = CHANNEL, on_event: OnEvent = log_event
) -> AsyncIterator[AsyncIterator[list[bytes]]]:
    """SUBSCRIBE on a socket of its own; once entered, everything published reaches it."""
    reader = Reader(url or config.REDIS_URL, channel)
    await reader.connect()
    on_event("subscribed", channel=channel)
    try:
        yield reader.batches(on_event)
    finally:
        reader.close()


class Reader:
    """A subscribed connection read with hiredis, reconnected when it drops."""

    def __init__(self, url: str, channel: str) -> None:
        clients.check_url(url, "REDIS_URL", ("redis", "rediss"))
        self.url, self.channel = url, channel
        self.parser = hiredis.Reader()
        self.stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> None:
        """Connect, log in if the URL says so, subscribe, and wait for Redis to confirm."""
        parts = urlsplit(self.url)
        tls = ssl.create_default_context() if parts.scheme == "rediss" else None
        self.stream = await asyncio.open_connection(
            parts.hostname or "127.0.0.1", parts.port or 6379, ssl=tls
        )
        self.parser = hiredis.Reader()
        if parts.password is not None:
            self.send("AUTH", unquote(parts.username or "default"), unquote(parts.password))
            if (answer := await self.reply()) != b"OK":
                raise clients.Misconfigured(f"Redis refused the login: {answer!r}")
        self.send("SUBSCRIBE", self.channel)
        await self.reply()  # [b"subscribe", channel, 1]

    def send(self, *command: str) -> None:
        assert self.stream is not None
        self.stream[1].write(hiredis.pack_command(command))

    async def reply(self) -> object:
        while (reply := self.parser.gets()) is False:
            self.parser.feed(await self.read(READ_BYTES))
        return reply

    async def read(self, size: int) -> bytes:
        assert self.stream is not None
        if not (data := await self.stream[0].read(size)):
            raise ConnectionResetError("Redis closed the connection")
        return data

    async def read_or_ping(self) -> bytes:
        """The next bytes; after IDLE_S of silence a PING, so a dead peer shows."""
        try:
            async with asyncio.timeout(IDLE_S):
                return await self.read(READ_BYTES)
        except TimeoutError:  # silent: is Redis still there?
            self.send("PING")
            async with asyncio.timeout(IDLE_S):
                return await self.read(READ_BYTES)

    def close(self) -> None:
        if self.stream is not None:
            self.stream[1].transport.abort()
            self.stream = None

    async def batches(self, on_event: OnEvent) -> AsyncIterator[list[bytes]]:
        """What each read brought, as a list of messages; reconnects when the link drops."""
        while True:
            try:
                data = await self.read_or_ping()
            except (OSError, TimeoutError) as error:
                await self.reconnect(error)
                on_event(
                    "resubscribed", channel=self.channel, missed="what was published meanwhile"
                )
                continue
            self.parser.feed(data)
            batch = []
            while (reply := self.parser.gets()) is not False:
                if reply[0] == b"message":  # else the answer to our PING: the link is alive
                    batch.append(reply[2])
            if batch:
                yield batch

    async def reconnect(self, error: BaseException) -> None:
        patience = clients.Patience("Redis", self.url)
        while True:
            self.close()
            await patience.wait(error)  # BrokerLost once out of patience
            try:
                return await self.connect()
            except (OSError, TimeoutError) as again:
                error = again
