"""The return address over Redis, tuned: commands from many requests go in one pipeline.

The same pattern, keys and guarantees as `redis_streams` (read that first); only the
round trips differ. There, each request is one XADD and each reply one MULTI/EXEC, and
every command costs a round trip and redis-py's per-command work (a connection taken
from the pool and given back, the reply parsed). Here a `Batcher` collects commands
from any number of callers while a round trip is out, and sends them all as the next
pipeline: the busier it gets, the bigger and cheaper per command the batches. The
requester batches its XADDs; the replier answers what needs no waiting at once, and
batches its replies, acks and deletions. A reply and its ack are no longer one
transaction: if the replier dies between a batch's RPUSH and its XACK (the pipeline is
not atomic), the request is answered twice, which the requester counts as late.

    python -m patterns.reqrep replier --transport redis --fast
    python -m patterns.reqrep load --transport redis --fast
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from patterns import clients
from patterns.events import OnEvent, log_event
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, ChannelClosed
from patterns.reqrep.handler import GRACE_S, Answer, Handler, ReplierCounts, answer, enveloped
from patterns.reqrep.redis_streams import (
    BLOCK_S,
    CLAIM_AFTER_S,
    CLIENT,
    GROUP,
    MAX_TTL_MS,
    PREFETCH,
    REPLIES_PREFIX,
    REQUESTS_STREAM,
    RedisRequester,
    ensure_group,
    number,
    text,
)

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # requests waiting to be sent before a requester waits for room

T = TypeVar("T")


class Batcher(Generic[T]):
    """Commands from many callers, sent together: one round trip per batch, not per command.

    Callers `add` without waiting; one task (`run`) sends whatever has queued up meanwhile
    as one pipeline (not a transaction), so the busier it gets, the bigger the batches.
    """

    def __init__(self, redis: aioredis.Redis, write: Callable[[Pipeline, T], None]) -> None:
        self.redis, self.write = redis, write
        self.queued: list[T] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.emptied = asyncio.Event()

    def add(self, item: T) -> None:
        self.queued.append(item)
        self._wake.set()

    def close(self) -> None:
        """`run` returns once it has sent what is queued (cancelling it could lose a batch)."""
        self._closed = True
        self._wake.set()

    async def run(self, on_results: Callable[[list[T], list[Any]], None]) -> None:
        while not (self._closed and not self.queued):
            await self._wake.wait()
            self._wake.clear()
            await self.flush(on_results)

    async def flush(self, on_results: Callable[[list[T], list[Any]], None]) -> None:
        items, self.queued = self.queued, []
        self.emptied.set()  # wakes whoever waits for room now...
        self.emptied.clear()  # ...and the next waiter waits for the next batch
        if items:
            pipe = self.redis.pipeline(transaction=False)
            for item in items:
                self.write(pipe, item)
            on_results(items, await pipe.execute(raise_on_error=False))


Request = tuple[str, bytes, int]  # (request id, data, timeout ms)


class BatchedRequester(RedisRequester):
    """`redis_streams.RedisRequester`, its XADDs batched into pipelines."""

    def __init__(
        self,
        url: str | None,
        stream: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        patience: float | None = None,
    ) -> None:
        super().__init__(url, stream, timeout, patience)
        self.requests: Batcher[Request] = Batcher(self.redis, self._write_request)
        self._sending = asyncio.create_task(self._send_batches())

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        if len(self.requests.queued) >= MAX_QUEUED:  # Redis takes them slower than they come
            await self._wait_to_send(self.requests.emptied.wait(), future)
        self.requests.add((request_id, wire.dumps(data), int(timeout * 1000)))

    def _write_request(self, pipe: Pipeline, request: Request) -> None:
        request_id, data, timeout_ms = request
        fields = {"id": request_id, "reply_to": self.reply_to, "data": data}
        pipe.xadd(self.stream, fields | {"timeout_ms": timeout_ms})

    def _on_sent(self, requests: list[Request], results: list[Any]) -> None:
        for (request_id, _, _), result in zip(requests, results, strict=True):
            future = self._waiting.get(request_id)
            if isinstance(result, Exception) and future is not None and not future.done():
                future.set_exception(ChannelClosed(request_id, f"Redis refused it: {result}"))

    async def _send_batches(self) -> None:
        try:
            await self.requests.run(self._on_sent)
        except (RedisError, clients.BrokerLost) as error:
            self._close(f"lost Redis: {error}")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        self._sending.cancel()
        await asyncio.gather(self._sending, return_exceptions=True)
        await super().aclose()


@contextlib.asynccontextmanager
async def requester(
    url: str | None = None,
    stream: str = REQUESTS_STREAM,
    timeout: float = DEFAULT_TIMEOUT_S,
    patience: float | None = None,
) -> AsyncIterator[BatchedRequester]:
    """A requester adding to `stream` in batches, its replies popped from its own list."""
    batched = BatchedRequester(url, stream, timeout, patience)
    try:
        await batched.redis.ping()
        yield batched
    finally:
        await batched.aclose()


Entry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields)
Reply = tuple[bytes, bytes, bytes | None, int]  # (entry id, reply_to, reply or None, ttl ms)


async def serve(
    handler: Handler,
    stream: str = REQUESTS_STREAM,
    prefetch: int = PREFETCH,
    claim_after: float = CLAIM_AFTER_S,
    url: str | None = None,
    group: str = GROUP,
    on_event: OnEvent = log_event,
) -> None:
    """`redis_streams.serve`, with the replies, acks and deletions of many requests batched."""
    counts = ReplierCounts()
    held: set[bytes] = set()  # entries taken and not acknowledged yet: ours, whatever happens
    working: set[asyncio.Task] = set()  # requests answered later
    consumer = f"replier-{uuid.uuid4().hex}"
    block_ms = int(min(BLOCK_S, claim_after / 2) * 1000)

    def write_reply(pipe: Pipeline, item: Reply) -> None:
        entry_id, reply_to, reply, ttl_ms = item
        if reply is not None:
            pipe.rpush(reply_to, reply)
            pipe.pexpire(reply_to, ttl_ms)
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)

    def on_replied(items: list[Reply], results: list[Any]) -> None:
        at = 0
        for entry_id, reply_to, reply, _ in items:
            held.discard(entry_id)  # acknowledged now
            if reply is not None and isinstance(results[at], Exception):
                counts.undeliverable += 1
                log.warning("a reply could not be stored in %.80r: %s", reply_to, results[at])
            at += 4 if reply is not None else 2

    async def reply_later(
        entry_id: bytes, fields: dict[bytes, bytes], result: Awaitable[Answer]
    ) -> None:
        replies.add(reply_item(entry_id, fields, await result, counts))

    def take(entries: list[Entry]) -> None:
        now_ms = time.time() * 1000
        for entry_id, fields in entries:
            held.add(entry_id)
            reply_to, timeout_ms = fields.get(b"reply_to", b""), number(fields.get(b"timeout_ms"))
            if timeout_ms > 0 and now_ms - int(entry_id.split(b"-")[0]) > timeout_ms:
                counts.expired += 1  # its requester has given up: skip it
                replies.add((entry_id, reply_to, None, 0))
            elif not reply_to.startswith(REPLIES_PREFIX):
                counts.skipped += 1
                log.warning("a request without a reply list, not answered: %.80r", fields)
                replies.add((entry_id, reply_to, None, 0))
            else:
                result = read(fields.get(b"data"))
                if isinstance(result, tuple):
                    replies.add(reply_item(entry_id, fields, result, counts))
                else:  # the handler answers later: a task adds its reply then
                    task = asyncio.create_task(reply_later(entry_id, fields, result))
                    working.add(task)
                    task.add_done_callback(working.discard)

    def read(data: bytes | None) -> Answer | Awaitable[Answer]:
        try:
            return answer(handler, wire.loads(data or b""))
        except MalformedMessage as problem:
            return None, str(problem)

    async with clients.redis(url, **CLIENT) as redis:
        replies: Batcher[Reply] = Batcher(redis, write_reply)
        flusher = asyncio.create_task(replies.run(on_replied))
        await ensure_group(redis, stream, group)
        on_event("ready", stream=stream, group=group, consumer=consumer)
        try:
            claimed_at = 0.0
            while not flusher.done():
                if len(working) >= prefetch:
                    await asyncio.wait(working, return_when=asyncio.FIRST_COMPLETED)
                    continue
                room = prefetch - len(working)
                if time.monotonic() - claimed_at > claim_after / 2:
                    claimed_at = time.monotonic()
                    if held:  # still ours: reset their idle time, so that nobody takes them
                        await redis.xclaim(stream, group, consumer, 0, list(held), justid=True)
                    _, claimed, _ = await redis.xautoclaim(
                        stream, group, consumer, int(claim_after * 1000), count=room
                    )
                    claimed = [entry for entry in claimed if entry[0] not in held]
                    counts.redelivered += len(claimed)
                    take(claimed)
                try:
                    read_from = await redis.xreadgroup(
                        group, consumer, {stream: ">"}, count=room, block=block_ms
                    )
                except ResponseError as error:  # NOGROUP: the stream was deleted meanwhile
                    log.warning("%s: %s; creating the group again", stream, error)
                    await ensure_group(redis, stream, group)
                    continue
                for _, entries in read_from:
                    take(entries)
            await flusher  # raises why it stopped
        finally:  # take no more requests; answer those in hand
            if working:
                await asyncio.wait(working, timeout=GRACE_S)
            for task in working:
                task.cancel()
            replies.close()  # what was answered before the end still goes out
            with contextlib.suppress(RedisError, clients.BrokerLost):
                await flusher
                if not await redis.xpending_range(stream, group, "-", "+", 1, consumer):
                    await redis.xgroup_delconsumer(stream, group, consumer)
            on_event("result", **vars(counts))


def reply_item(
    entry_id: bytes, fields: dict[bytes, bytes], result: Answer, counts: ReplierCounts
) -> Reply:
    """The reply to an entry, addressed to its reply list, which expires after its timeout."""
    request_id = text(fields.get(b"id"))
    ttl_ms = min(max(number(fields.get(b"timeout_ms")), 1_000), MAX_TTL_MS)
    reply = enveloped(request_id, result, counts)
    return entry_id, fields[b"reply_to"], reply, ttl_ms
