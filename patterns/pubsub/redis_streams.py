"""Redis Streams with redis-py: an append-only log; every reader reads it from its own cursor.

    redis = clients.redis()
    await publish(redis, b"hello")             # XADD chat_stream MAXLEN ~ 10000 * message hello
    async with subscription(redis) as entries: # from now on ("$", pinned to an id)
        async for entry_id, message in entries: ...  # XREAD BLOCK from the last id read

A publisher appends an entry with one field, `message`. A reader keeps the id of the last
entry it read, its cursor, and asks for what follows (XREAD BLOCK), so:

* a reader whose connection drops resumes from its cursor: redis-py's `Retry` reconnects
  and sends the same XREAD again, and the reader gets what was appended meanwhile, nothing
  twice, in order (Pub/Sub loses exactly that part);
* a late reader reads the history first (XREVRANGE up to its cursor), then live entries;
* the log is bounded: each XADD trims the stream to about `maxlen` entries (`MAXLEN ~`:
  Redis trims whole internal nodes, so a few more may stay, which keeps trimming cheap).
  A reader further behind than the stream holds (away too long, or too slow) finds its
  next entries trimmed away: it reports "trimmed" when the entry it read last is gone.

An entry without a `message` field (written by something else) is reported and skipped.
"""

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from patterns.events import OnEvent, log_event

STREAM = "chat_stream"  # docs/wire.md
FIELD = b"message"
MAXLEN = 10_000
COUNT = 1_000  # entries per XREAD at most: what is there comes in one reply
BLOCK_MS = 1_000  # shorter than redis-py's socket timeout: a quiet stream is no error


async def publish(
    redis: aioredis.Redis, message: bytes, stream: str = STREAM, maxlen: int = MAXLEN
) -> bytes:
    """XADD, trimming the stream to about `maxlen` entries; the new entry's id."""
    return await redis.xadd(stream, {FIELD: message}, maxlen=maxlen, approximate=True)


async def last_id(redis: aioredis.Redis, stream: str = STREAM) -> bytes:
    """The id of the newest entry (0-0 for an empty stream): "now", as a cursor."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else b"0-0"


async def history(
    redis: aioredis.Redis, upto: bytes, count: int, stream: str = STREAM
) -> list[bytes]:
    """The last `count` messages up to entry `upto`, oldest first."""
    entries = await redis.xrevrange(stream, max=upto, count=count)
    return [fields[FIELD] for _, fields in reversed(entries) if FIELD in fields]


@contextlib.asynccontextmanager
async def subscription(
    redis: aioredis.Redis,
    stream: str = STREAM,
    after: bytes | str = "$",
    count: int = COUNT,
    on_event: OnEvent = log_event,
) -> AsyncIterator[AsyncIterator[tuple[bytes, bytes]]]:
    """Read `stream` after entry `after`: "$" (what is appended from now on), "0" (all it
    holds) or the id of the last entry this reader had."""
    cursor = await last_id(redis, stream) if after == "$" else after  # "now", pinned
    on_event("subscribed", stream=stream, after=str(cursor))
    yield entries(redis, stream, cursor, count, on_event)


async def entries(
    redis: aioredis.Redis, stream: str, cursor: bytes | str, count: int, on_event: OnEvent
) -> AsyncIterator[tuple[bytes, bytes]]:
    """(entry id, message) of each entry after `cursor`, in order, for ever."""
    while True:
        reply = await redis.xread({stream: cursor}, count=count, block=BLOCK_MS)
        for _, batch in reply:  # one stream: one (name, entries) pair, or none
            if len(batch) == count and await trimmed_after(redis, stream, cursor):
                on_event("trimmed", stream=stream, after=str(cursor), missed="trimmed entries")
            for entry_id, fields in batch:
                cursor = entry_id
                if FIELD in fields:
                    yield entry_id, fields[FIELD]
                else:
                    on_event("skipped", stream=stream, id=entry_id.decode(), why="no message")


async def trimmed_after(redis: aioredis.Redis, stream: str, cursor: bytes | str) -> bool:
    """May entries after `cursor` have been trimmed before they were read? Yes if the
    stream no longer holds the cursor's entry itself (trimming takes the oldest first).
    Only a full batch asks: a reader fewer than `count` entries behind is within what a
    stream of `maxlen` >= `count` entries keeps."""
    oldest = await redis.xrange(stream, count=1)
    return bool(oldest) and entry_id(cursor) > (0, 0) and entry_id(oldest[0][0]) > entry_id(cursor)


def entry_id(text: bytes | str) -> tuple[int, int]:
    """An entry id `1700000000000-3` as a tuple that compares in stream order."""
    millis, _, seq = (text.decode() if isinstance(text, bytes) else text).partition("-")
    return int(millis), int(seq or 0)
