"""The return address over Redis (redis-py): a request stream, and a reply list per requester.

Requests are entries of one stream, `requests_stream` (XADD), read by the consumer group
`repliers_group` (XREADGROUP), so any number of repliers compete for them and each request
goes to one. An entry's fields are the request: `id`, `reply_to` (the key of its
requester's reply list, under `replies:`), `data` (JSON) and `timeout_ms`. A replier
pushes the reply (the book's JSON envelope, `inReplyTo` = the id) onto the `reply_to`
list (RPUSH), and acknowledges and deletes the entry (XACK, XDEL), all in one MULTI/EXEC
transaction. Each requester pops its own list (BLMPOP).

    python -m patterns.reqrep replier --transport redis

    async with redis_streams.requester() as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

What it guarantees, and how it fails:

* a replier that dies leaves its requests pending in the group; the others take them over
  (XAUTOCLAIM) once they have been idle for `claim_after` seconds. A live replier resets
  the idle time of the requests it holds every `claim_after / 2` seconds (XCLAIM), so a
  slow request is not taken from a replier that is alive;
* a request older than its `timeout_ms` is skipped (its requester gave up), so a backlog
  left by an outage drains at once instead of being computed for nobody;
* the reply list expires after the request's timeout, so the replies to a requester that
  is gone do not stay in Redis for ever; a live requester deletes its list on close.
  Unlike an exclusive AMQP queue, a list outlives a dropped connection: a requester
  rides out an outage shorter than its patience and finds the replies that came meanwhile;
* every entry is accounted for: answered, refused (an error reply), expired, or skipped
  when it names no reply list under `replies:` (a reply goes nowhere else: a request
  cannot make the replier write to, or set to expire, any other key).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from patterns import clients, config
from patterns.events import OnEvent, log_event
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, ChannelClosed, Requester
from patterns.reqrep.handler import GRACE_S, Answer, Handler, ReplierCounts, answer, enveloped

log = logging.getLogger(__name__)

REQUESTS_STREAM = "requests_stream"
GROUP = "repliers_group"
REPLIES_PREFIX = b"replies:"
PREFETCH = 100  # requests a replier holds at once
CLAIM_AFTER_S = 5.0
BLOCK_S = 1  # a blocking read waits at most this long, then looks again
BATCH = 1_000  # replies popped at most per read
MAX_TTL_MS = 86_400_000  # a reply list expires after its request's timeout, a day at most
# each command in flight holds a connection: past this many, commands wait for one
MAX_CONNECTIONS = 32
# No socket timeout: a blocking read returns within BLOCK_S anyway, and with one redis-py
# sends each command under asyncio.wait_for, which on Python 3.11 can lose a cancellation
# that arrives as the send completes (fixed in 3.12): a stopped loop would go on reading.
CLIENT = {"max_connections": MAX_CONNECTIONS, "socket_timeout": None}


class RedisRequester(Requester):
    transport = "redis"

    def __init__(
        self,
        url: str | None,
        stream: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        patience: float | None = None,
    ) -> None:
        super().__init__(timeout)
        self.url, self.stream = url or config.REDIS_URL, stream
        self.reply_to = f"{REPLIES_PREFIX.decode()}{self._prefix}"
        self.redis = clients.redis(self.url, patience, **CLIENT)
        self._reading = asyncio.create_task(self._read_replies())

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        request = {"id": request_id, "reply_to": self.reply_to, "data": wire.dumps(data)}
        request["timeout_ms"] = int(timeout * 1000)
        try:
            await self._wait_to_send(self.redis.xadd(self.stream, request), future)
        except (RedisError, clients.BrokerLost) as error:
            raise ChannelClosed(request_id, f"Redis did not take it: {error}") from None

    async def _read_replies(self) -> None:
        try:
            while True:
                popped = await self.redis.blmpop(
                    BLOCK_S, 1, self.reply_to, direction="LEFT", count=BATCH
                )
                for raw in popped[1] if popped else ():
                    try:
                        request_id, data, error = wire.read_reply(raw)
                    except MalformedMessage as problem:
                        self._malformed(raw, str(problem))
                        continue
                    self._settle(request_id, data, error)
        except (RedisError, clients.BrokerLost) as error:  # for longer than the patience
            self._close(f"lost Redis at {config.redacted(self.url)}: {error}")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        with contextlib.suppress(RedisError, clients.BrokerLost):
            await self.redis.delete(self.reply_to)
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def requester(
    url: str | None = None,
    stream: str = REQUESTS_STREAM,
    timeout: float = DEFAULT_TIMEOUT_S,
    patience: float | None = None,
) -> AsyncIterator[RedisRequester]:
    """A requester adding to `stream`, its replies popped from its own list; it rides out
    a lost connection for `patience` seconds (default: `config.GIVE_UP_AFTER_S`)."""
    redis_requester = RedisRequester(url, stream, timeout, patience)
    try:
        await redis_requester.redis.ping()  # a wrong URL or password says so here, once
        yield redis_requester
    finally:
        await redis_requester.aclose()


async def serve(
    handler: Handler,
    stream: str = REQUESTS_STREAM,
    prefetch: int = PREFETCH,
    claim_after: float = CLAIM_AFTER_S,
    url: str | None = None,
    group: str = GROUP,
    on_event: OnEvent = log_event,
) -> None:
    """Answer the group's requests, at most `prefetch` at once; take over abandoned ones."""
    counts, answering = ReplierCounts(), set[asyncio.Task]()
    held: set[bytes] = set()  # entries taken and not acknowledged yet: ours, whatever happens
    consumer = f"replier-{uuid.uuid4().hex}"
    block_ms = int(min(BLOCK_S, claim_after / 2) * 1000)  # wake up to keep the held ours
    async with clients.redis(url, **CLIENT) as redis:

        async def reply(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
            try:
                await answer_entry(redis, stream, group, entry_id, fields, handler, counts)
            finally:
                held.discard(entry_id)

        await ensure_group(redis, stream, group)
        on_event("ready", stream=stream, group=group, consumer=consumer)
        try:
            claimed_at = 0.0
            while True:
                if len(answering) >= prefetch:
                    await asyncio.wait(answering, return_when=asyncio.FIRST_COMPLETED)
                    continue
                room, entries = prefetch - len(answering), []
                if time.monotonic() - claimed_at > claim_after / 2:
                    claimed_at = time.monotonic()
                    if held:  # still ours: reset their idle time, so that nobody takes them
                        await redis.xclaim(stream, group, consumer, 0, list(held), justid=True)
                    _, claimed, _ = await redis.xautoclaim(
                        stream, group, consumer, int(claim_after * 1000), count=room
                    )
                    entries = [entry for entry in claimed if entry[0] not in held]
                    counts.redelivered += len(entries)
                try:
                    read = await redis.xreadgroup(
                        group, consumer, {stream: ">"}, count=room, block=block_ms
                    )
                except ResponseError as error:  # NOGROUP: the stream was deleted meanwhile
                    log.warning("%s: %s; creating the group again", stream, error)
                    await ensure_group(redis, stream, group)
                    continue
                for _, fresh in read:
                    entries += fresh
                for entry_id, fields in entries:  # each answered in a task: out of order
                    held.add(entry_id)
                    task = asyncio.create_task(reply(entry_id, fields))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
        finally:  # take no more requests; answer those in hand
            if answering:
                await asyncio.wait(answering, timeout=GRACE_S)
            for task in answering:
                task.cancel()  # left pending in the group, for another replier to claim
            with contextlib.suppress(RedisError, clients.BrokerLost):
                if not await redis.xpending_range(stream, group, "-", "+", 1, consumer):
                    await redis.xgroup_delconsumer(stream, group, consumer)
            on_event("result", **vars(counts))


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """The group, created with the stream if missing, at its start (requests sent before
    any replier came must still be answered)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):  # it exists: fine
            raise


async def answer_entry(
    redis: aioredis.Redis,
    stream: str,
    group: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    handler: Handler,
    counts: ReplierCounts,
) -> None:
    """Answer one entry (unless it expired or names no reply list), ack and delete it."""
    reply_to = fields.get(b"reply_to", b"")
    timeout_ms = number(fields.get(b"timeout_ms"))
    if timeout_ms > 0 and time.time() * 1000 - int(entry_id.split(b"-")[0]) > timeout_ms:
        counts.expired += 1  # its requester has given up: skip it
        reply = None
    elif not reply_to.startswith(REPLIES_PREFIX):
        counts.skipped += 1
        log.warning("a request without a reply list, not answered: %.80r", fields)
        reply = None
    else:
        request_id = text(fields.get(b"id"))
        reply = enveloped(request_id, await answered(handler, fields.get(b"data")), counts)
    async with redis.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all of it, or none
        if reply is not None:
            pipe.rpush(reply_to, reply)
            pipe.pexpire(reply_to, min(max(timeout_ms, 1_000), MAX_TTL_MS))
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)
        results = await pipe.execute(raise_on_error=False)
    if reply is not None and isinstance(results[0], Exception):  # not a list: WRONGTYPE
        counts.undeliverable += 1
        log.warning("a reply could not be stored in %.80r: %s", reply_to, results[0])


async def answered(handler: Handler, data: bytes | None) -> Answer:
    """The handler's answer to a request's data, or what makes the data unreadable."""
    try:
        request = wire.loads(data or b"")
    except MalformedMessage as problem:
        return None, str(problem)
    result = answer(handler, request)
    return result if isinstance(result, tuple) else await result


def number(value: bytes | None) -> int:
    """An entry's integer field; 0 (none) if it is missing or not an integer."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value is not None else None
