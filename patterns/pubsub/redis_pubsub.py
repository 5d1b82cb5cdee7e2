"""Redis Pub/Sub: every subscriber connected to a channel gets every message published to it.

Redis keeps nothing. A message goes to the subscribers connected at that instant and is
gone: a subscriber that is disconnected (its network, its restart, Redis's restart)
misses what is published until it has subscribed again. At most once, in order per
publisher connection. A subscriber that reads too slowly has its messages queued inside
Redis up to `client-output-buffer-limit pubsub` (by default 32 MB at once, or 8 MB for
60 s), and is then disconnected by Redis: the server protects itself, not the subscriber.

The subscriber reads the socket itself and parses with hiredis (the C parser that
redis-py uses for speed): one read takes every message that has arrived, and each is
parsed without an `await`. redis-py's `PubSub.get_message` costs an `await` and several
Python layers per message, several times slower (measured in notebook 02).
"""

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis

from patterns.pubsub.retry import Backoff, OnState, log_state, reason

CHANNEL = "chat_messages"  # WIRE.md: the book's chat channel
READ_BYTES = 1 << 16
IDLE_S = 30.0  # silent this long: PING; silent twice as long: the connection is dead


class Publisher:
    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self.client = aioredis.from_url(url)
        self.channel = channel

    async def publish(self, payloads: Sequence[bytes]) -> None:
        """One round trip for the whole batch (a pipeline, not a transaction)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self.channel, payload)
            await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


class Subscriber:
    """`async with Subscriber(url, channel) as s:` then `async for batch in s.batches()`."""

    def __init__(self, url: str, channel: str = CHANNEL, on_state: OnState = log_state) -> None:
        self.url = url
        self.channel = channel
        self.on_state = on_state
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def _connect(self) -> None:
        """Connect, log in if the URL says so, subscribe, and wait for Redis to confirm."""
        parts = urlsplit(self.url)
        tls = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._reader, self._writer = await asyncio.open_connection(
            parts.hostname or "127.0.0.1", parts.port or 6379, ssl=tls
        )
        self._parser = hiredis.Reader()
        if parts.password is not None:
            user = unquote(parts.username or "default")
            self._send("AUTH", user, unquote(parts.password))
            await self._expect(b"OK")
        self._send("SUBSCRIBE", self.channel)
        await self._expect([b"subscribe", self.channel.encode(), 1])

    def _send(self, *command: str | bytes) -> None:
        assert self._writer is not None
        self._writer.write(hiredis.pack_command(command))

    async def _expect(self, expected: object) -> None:
        assert self._reader is not None
        while (reply := self._parser.gets()) is False:
            if not (data := await self._reader.read(READ_BYTES)):
                raise ConnectionResetError("Redis closed the connection")
            self._parser.feed(data)
        if reply != expected:
            raise ConnectionError(f"Redis answered {reply!r}, expected {expected!r}")

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = self._reader = None

    async def __aenter__(self) -> "Subscriber":
        await self._connect()
        self.on_state("subscribed", f"to {self.channel}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    async def _read(self) -> bytes:
        """The next bytes from Redis; a PING after IDLE_S of silence, so a dead peer shows."""
        assert self._reader is not None
        try:
            data = await asyncio.wait_for(self._reader.read(READ_BYTES), IDLE_S)
        except TimeoutError:
            self._send("PING")
            data = await asyncio.wait_for(self._reader.read(READ_BYTES), IDLE_S)
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        return data

    async def _reconnect(self, error: BaseException) -> None:
        self._close()
        self.on_state("lost", f"{self.channel}: {reason(error)}; what is published now is lost")
        backoff = Backoff()
        while True:
            await backoff.wait()
            try:
                await self._connect()
            except (OSError, TimeoutError) as retry_error:
                self._close()
                self.on_state("retrying", reason(retry_error))
            else:
                self.on_state("reconnected", f"subscribed to {self.channel} again")
                return

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Every message, in lists of what one read brought; reconnects when the link drops."""
        while True:
            try:
                data = await self._read()
            except (OSError, TimeoutError) as error:
                await self._reconnect(error)
                continue
            self._parser.feed(data)
            batch = []
            while (reply := self._parser.gets()) is not False:
                if isinstance(reply, list) and reply[0] == b"message":
                    batch.append(reply[2])
                # else: the answer to our PING ([b"pong", b""]): the link is alive
            if batch:
                yield batch
