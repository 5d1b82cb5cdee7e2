"""The return address over Redis: requests on a stream, each reply pushed to its requester's list.

Requests are entries of one stream, `requests_stream`, read by a consumer group, so any
number of repliers compete for them and each request goes to one. An entry's fields are
the request: `id`, `reply_to` (the key of its requester's reply list), `data` (JSON) and
`timeout_ms`. A replier pushes the reply (the book's JSON envelope, `inReplyTo` = the id)
onto the `reply_to` list, then acknowledges and deletes the entry, all in one pipeline.
Each requester pops its own list.

    python -m patterns.reqrep.replier --transport redis

    async with redis_streams.requester() as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

What makes it safe to leave running:

* a replier that dies leaves its requests pending in the group; the others take them over
  (XAUTOCLAIM) once they have been idle for `claim_after` seconds. A live replier resets
  the idle time of the requests it holds (taken, not yet acknowledged) every
  `claim_after / 2` seconds, so a slow request is not taken from a replier that is alive;
* a request older than its `timeout_ms` is skipped (its requester gave up), so a backlog
  left by an outage drains at once instead of being computed for nobody;
* a reply list expires `timeout_ms` after its last reply, so the replies to a requester
  that is gone do not stay in Redis for ever; a live requester deletes its list on close.
  Unlike an exclusive AMQP queue, a list outlives a dropped connection: a requester that
  reconnects finds the replies that came meanwhile.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from patterns import config, processes
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, ChannelClosed, Requester
from patterns.reqrep.replier import GRACE_S, Answer, Handler, ReplierCounts, answer, enveloped

log = logging.getLogger(__name__)

REQUESTS_STREAM = "requests_stream"
GROUP = "repliers_group"
REPLIES_PREFIX = "replies:"
BLOCK_S = 1  # blocking reads wait at most this long, well under the socket timeout
BATCH = 1_000
MAX_QUEUED = 10_000  # requests waiting to be sent before a requester waits for room
# a requester rides out a broken connection for about a second (its replies wait in its
# list meanwhile); if Redis stays away longer, every pending request fails
RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=3)

T = TypeVar("T")


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis call swallowed.

    redis-py sends each command under `asyncio.wait_for` (the socket timeout), and on
    Python 3.11 `wait_for` loses a cancellation that arrives just as the command completes
    (fixed in 3.12); the task is left marked as cancelling, so loops check after each call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Batcher(Generic[T]):
    """Commands from many callers, sent together: one round trip per batch, not per command.

    Callers `add` without waiting; a single task sends whatever has queued up meanwhile as
    one pipeline, so the busier it gets, the bigger (and cheaper per command) the batches.
    """

    def __init__(self, client: aioredis.Redis, write: Callable[[Pipeline, T], None]) -> None:
        self.client, self.write = client, write
        self.queued: list[T] = []
        self._wake = asyncio.Event()
        self.emptied = asyncio.Event()

    def add(self, item: T) -> None:
        self.queued.append(item)
        self._wake.set()

    async def run(self, on_results: Callable[[list[T], list[Any]], None]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush(on_results)
            raise_if_cancelled()

    async def flush(self, on_results: Callable[[list[T], list[Any]], None]) -> None:
        items, self.queued = self.queued, []
        self.emptied.set()  # wakes whoever waits for room now...
        self.emptied.clear()  # ...and the next waiter waits for the next batch
        if items:
            pipe = self.client.pipeline(transaction=False)
            for item in items:
                self.write(pipe, item)
            on_results(items, await pipe.execute(raise_on_error=False))


class RedisRequester(Requester):
    transport = "redis"

    def __init__(self, url: str, stream: str, timeout: float) -> None:
        super().__init__(timeout)
        self.url, self.stream = url, stream
        self.reply_to = f"{REPLIES_PREFIX}{self._prefix}"
        self.client = aioredis.from_url(url, retry=RETRY)
        self.reader = aioredis.from_url(url, retry=RETRY, socket_timeout=BLOCK_S + 5)
        self.requests = Batcher(self.client, self._write_request)
        self._tasks = [
            asyncio.create_task(self._watched(self.requests.run(self._on_sent))),
            asyncio.create_task(self._watched(self._read_replies())),
        ]

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        if len(self.requests.queued) >= MAX_QUEUED:  # Redis takes them slower than they come
            await self._wait_to_send(self.requests.emptied.wait(), future)
        self.requests.add((request_id, wire.dumps(data), int(timeout * 1000)))

    def _write_request(self, pipe: Pipeline, request: tuple[str, bytes, int]) -> None:
        request_id, data, timeout_ms = request
        fields = {"id": request_id, "reply_to": self.reply_to, "data": data}
        pipe.xadd(self.stream, fields | {"timeout_ms": timeout_ms})

    def _on_sent(self, requests: list[tuple[str, bytes, int]], results: list[Any]) -> None:
        for (request_id, _, _), result in zip(requests, results, strict=True):
            future = self._waiting.get(request_id)
            if isinstance(result, Exception) and future is not None and not future.done():
                future.set_exception(ChannelClosed(request_id, f"Redis refused it: {result}"))

    async def _read_replies(self) -> None:
        while True:
            popped = await self.reader.blmpop(
                BLOCK_S, 1, self.reply_to, direction="LEFT", count=BATCH
            )
            raise_if_cancelled()
            for raw in popped[1] if popped else ():
                try:
                    request_id, data, error = wire.read_reply(raw)
                except MalformedMessage as problem:
                    self._malformed(raw, str(problem))
                    continue
                self._settle(request_id, data, error)

    async def _watched(self, work: Any) -> None:
        """Run `work`; if Redis fails it (after the client's own retries), fail every request."""
        try:
            await work
        except RedisError as error:
            self._close(f"lost Redis at {config.redacted(self.url)}: {error}")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.client.delete(self.reply_to)
        await self.reader.aclose()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def requester(
    url: str = config.REDIS_URL, stream: str = REQUESTS_STREAM, timeout: float = DEFAULT_TIMEOUT_S
) -> AsyncIterator[RedisRequester]:
    """A requester adding to `stream`, its replies popped from its own list."""
    redis_requester = RedisRequester(url, stream, timeout)
    try:
        await redis_requester.client.ping()  # an unreachable Redis fails here, clearly
        yield redis_requester
    finally:
        await redis_requester.aclose()


# ---- the replier: python -m patterns.reqrep.replier --transport redis -------------------

Entry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields)
Reply = tuple[bytes, bytes | None, bytes | None, int]  # (entry id, reply_to, reply, ttl ms)


async def serve(
    handler: Handler,
    stream: str = REQUESTS_STREAM,
    prefetch: int = 100,
    claim_after: float = 5.0,
    url: str = config.REDIS_URL,
    group: str = GROUP,
) -> None:
    """Answer the group's requests, at most `prefetch` at once; take over abandoned ones."""
    counts = ReplierCounts()
    held: set[bytes] = set()  # entries taken and not acknowledged yet: ours, whatever happens
    working: set[asyncio.Task] = set()  # requests answered later
    consumer = f"replier-{uuid.uuid4().hex}"
    # one client blocks reading requests; the other writes replies, and a stop that
    # interrupts a blocked read cannot disturb the replies still to be written
    client = aioredis.from_url(url, socket_timeout=BLOCK_S + 5)
    writer = aioredis.from_url(url)

    def write_reply(pipe: Pipeline, item: Reply) -> None:
        entry_id, reply_to, reply, ttl_ms = item
        if reply_to is not None and reply is not None:
            pipe.rpush(reply_to, reply)
            pipe.pexpire(reply_to, ttl_ms)
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)

    def on_replied(items: list[Reply], results: list[Any]) -> None:
        held.difference_update(item[0] for item in items)  # acknowledged now
        for problem in filter(lambda result: isinstance(result, Exception), results):
            counts.undeliverable += 1
            log.warning("a reply could not be stored: %s", problem)

    replies = Batcher(writer, write_reply)

    async def reply_later(
        entry_id: bytes, reply_to: bytes, request_id: Any, result: Any, ttl_ms: int
    ) -> None:
        replies.add(reply_item(entry_id, reply_to, request_id, await result, counts, ttl_ms))

    def take(entries: list[Entry]) -> None:
        now_ms = time.time() * 1000
        for entry_id, fields in entries:
            held.add(entry_id)
            if not fields:  # deleted while pending: nothing left to answer
                replies.add((entry_id, None, None, 0))
                continue
            request_id, reply_to = text(fields.get(b"id")), fields.get(b"reply_to")
            timeout_ms = int(fields.get(b"timeout_ms") or 0)
            added_ms = int(entry_id.split(b"-")[0])
            if timeout_ms and now_ms - added_ms > timeout_ms:
                counts.expired += 1  # its requester has given up: skip it
                replies.add((entry_id, None, None, 0))
            elif reply_to is None:
                counts.refused += 1
                log.warning("a request without reply_to, nobody to answer: %.80r", fields)
                replies.add((entry_id, None, None, 0))
            else:
                result = read(fields.get(b"data"))
                ttl_ms = max(timeout_ms, 1_000)
                if isinstance(result, tuple):
                    replies.add(reply_item(entry_id, reply_to, request_id, result, counts, ttl_ms))
                else:
                    task = asyncio.create_task(
                        reply_later(entry_id, reply_to, request_id, result, ttl_ms)
                    )
                    working.add(task)
                    task.add_done_callback(working.discard)

    def read(data: bytes | None) -> Answer | Any:
        try:
            return answer(handler, wire.loads(data or b""))
        except MalformedMessage as problem:
            return None, str(problem)

    flusher = asyncio.create_task(replies.run(on_replied))
    try:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        processes.report("ready", stream=stream, group=group, consumer=consumer)
        claimed_at = 0.0
        block_ms = int(min(BLOCK_S, claim_after / 2) * 1000)  # wake up to refresh the held
        while not flusher.done():
            if len(working) >= prefetch:
                await asyncio.wait(working, return_when=asyncio.FIRST_COMPLETED)
                continue
            room = prefetch - len(working)
            if time.monotonic() - claimed_at > claim_after / 2:
                claimed_at = time.monotonic()
                if held:  # still ours: reset their idle time, so that nobody takes them
                    await client.xclaim(stream, group, consumer, 0, list(held), justid=True)
                _, entries, _ = await client.xautoclaim(
                    stream, group, consumer, int(claim_after * 1000), count=room
                )
                entries = [entry for entry in entries if entry[0] not in held]
                counts.redelivered += len(entries)
                take(entries)
            read_from = await client.xreadgroup(
                group, consumer, {stream: ">"}, count=room, block=block_ms
            )
            raise_if_cancelled()
            for _, entries in read_from:
                take(entries)
        await flusher  # raises why it stopped
    finally:
        if working:  # take no more requests; answer those in hand
            await asyncio.wait(working, timeout=GRACE_S)
        for task in working:
            task.cancel()
        flusher.cancel()
        with contextlib.suppress(RedisError):
            await asyncio.gather(flusher, return_exceptions=True)
            await replies.flush(on_replied)  # what was answered before the end
            if not await writer.xpending_range(stream, group, "-", "+", 1, consumer):
                await writer.xgroup_delconsumer(stream, group, consumer)
        await writer.aclose()
        await client.aclose()
        processes.report("result", **vars(counts))


def reply_item(
    entry_id: bytes,
    reply_to: bytes,
    request_id: Any,
    result: Answer,
    counts: ReplierCounts,
    ttl_ms: int,
) -> Reply:
    return entry_id, reply_to, enveloped(request_id, result, counts), ttl_ms


def text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value is not None else None
