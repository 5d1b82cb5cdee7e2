"""Redis Streams: an append-only log in Redis; every reader reads it from its own cursor.

A publisher appends (XADD) an entry with one field, `message`. A reader remembers the id
of the last entry it has read and asks for what comes after it (XREAD BLOCK), so:

* a reader that was disconnected resumes from its cursor: it gets what was appended
  meanwhile, nothing twice, in order (Pub/Sub loses exactly that part);
* a late reader can read the history first (XRANGE/XREVRANGE), then live entries;
* the log is bounded: each XADD trims it to about `maxlen` entries (`MAXLEN ~`: Redis trims
  whole internal nodes, so a few more may stay, which makes trimming cheap). A reader away
  for longer than the stream holds finds its next entries trimmed away; it says so.

Entries without a `message` field (written by something else) are counted and skipped.
"""

import logging
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
import redis.exceptions

from patterns.pubsub.retry import Backoff, OnState, log_state, reason

STREAM = "chat_stream"  # WIRE.md
FIELD = b"message"
MAXLEN = 10_000
COUNT = 1_000  # entries per XREAD: what is ready comes in one reply
BLOCK_MS = 1_000  # under redis-py's 5 s socket timeout, so a quiet stream is not an error

log = logging.getLogger("patterns.pubsub")


def entry_id(text: bytes | str) -> tuple[int, int]:
    """An entry id `1700000000000-3` as a tuple that compares in stream order."""
    millis, _, seq = (text.decode() if isinstance(text, bytes) else text).partition("-")
    return int(millis), int(seq or 0)


class Publisher:
    def __init__(self, url: str, stream: str = STREAM, maxlen: int = MAXLEN) -> None:
        self.client = aioredis.from_url(url)
        self.stream = stream
        self.maxlen = maxlen

    async def publish(self, payloads: Sequence[bytes]) -> None:
        """Append the batch in one round trip, each XADD trimming the stream to ~maxlen."""
        async with self.client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(self.stream, {FIELD: payload}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


class Subscriber:
    """`async with Subscriber(url) as s:` then `async for batch in s.batches()`.

    `after` is where to start: "$" (only what is appended from now on), "0" (everything the
    stream holds) or the id of the last entry this reader had.
    """

    def __init__(
        self, url: str, stream: str = STREAM, after: str = "$", on_state: OnState = log_state
    ) -> None:
        self.client = aioredis.from_url(url)
        self.stream = stream
        self.cursor = after
        self.on_state = on_state
        self.malformed = 0

    async def __aenter__(self) -> "Subscriber":
        if self.cursor == "$":  # pin "now" to an id, so history and live meet exactly there
            last = await self.client.xrevrange(self.stream, count=1)
            self.cursor = last[0][0].decode() if last else "0-0"
        self.on_state("subscribed", f"to {self.stream} after {self.cursor}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()

    async def history(self, count: int, upto: str | None = None) -> list[bytes]:
        """The last `count` messages up to entry `upto` (default: the cursor), oldest first."""
        entries = await self.client.xrevrange(self.stream, max=upto or self.cursor, count=count)
        return self._messages(reversed(entries))

    def _messages(self, entries: object) -> list[bytes]:
        messages = []
        for _, fields in entries:  # type: ignore[attr-defined]
            if (message := fields.get(FIELD)) is None:
                self.malformed += 1
                log.warning("%s: an entry without a %r field, skipped", self.stream, FIELD)
            else:
                messages.append(message)
        return messages

    async def _trimmed_since_cursor(self) -> bool:
        info = await self.client.xinfo_stream(self.stream)
        deleted = info.get("max-deleted-entry-id", b"0-0")
        return entry_id(deleted) > entry_id(self.cursor)

    async def _reconnect(self, error: BaseException) -> None:
        self.on_state("lost", f"{self.stream}: {reason(error)}; will resume after {self.cursor}")
        backoff = Backoff()
        while True:
            await backoff.wait()
            try:
                trimmed = await self._trimmed_since_cursor()
            except redis.exceptions.ResponseError:  # the stream is gone: nothing to resume
                trimmed = False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as again:
                self.on_state("retrying", reason(again))
                continue
            if trimmed:
                self.on_state("trimmed", f"entries after {self.cursor} were trimmed meanwhile")
            self.on_state("reconnected", f"resuming {self.stream} after {self.cursor}")
            return

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Every message after the cursor, as many per batch as were there (up to COUNT)."""
        while True:
            try:
                reply = await self.client.xread({self.stream: self.cursor}, COUNT, BLOCK_MS)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
                await self._reconnect(error)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            self.cursor = entries[-1][0].decode()
            if batch := self._messages(entries):
                yield batch
