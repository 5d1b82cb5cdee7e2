"""The hashsum cracker over Redis Streams (redis-py): a consumer group shares out one stream.

The producer appends each task to the stream `tasks_stream` (XADD, field `task`). The
workers read it as members of the consumer group `workers_group` (XREADGROUP), so each
entry goes to one of them, and stays *pending* (in the group's pending-entries list, with
its consumer, idle time and delivery count) until that worker acknowledges it (XACK). A
worker appends what a task produced, acks the task and deletes it (XDEL) in one
MULTI/EXEC transaction: all of it happens or none, so a worker that dies leaves its task
pending, never half done.

    python -m patterns.tasks collector --transport streams
    python -m patterns.tasks worker --transport streams --name w1   # a stable name per worker
    python -m patterns.tasks producer --transport streams --max-length 4 --word node

What the group does not do by itself, each worker does:

* on start it first reads its *own* pending entries (XREADGROUP from id 0): a restarted
  worker finishes what it had taken;
* every `claim_idle / 2` seconds it takes over entries another consumer left pending for
  longer than `claim_idle` (XAUTOCLAIM): a dead worker's tasks are done by the living.
  The idle time must be longer than one read's tasks take, or a slow worker's task is
  done twice;
* delivery counts bound retries: an entry delivered more than `max_attempts` times goes
  to the dead-letter stream `tasks_stream.dead` with the reason, and is acked;
* if the group is gone (the stream was deleted, or Redis restarted without its data), it
  creates it again. What the lost stream held is lost: the collector notices that its
  reports stream went back in time, and names what is missing.

A stream is a log: nothing leaves it when read. Done tasks are deleted, so the tasks
stream holds only what is undone and is never trimmed (trimming could remove an entry
still pending). The producer keeps at most `window` tasks undone: the group's pending
entries plus its lag (the entries not yet delivered), or, when Redis cannot say the lag
(Redis 7.0 after loading its append-only file), the length of the stream.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import islice

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from patterns import clients
from patterns.events import OnEvent, log_event
from patterns.tasks import wire
from patterns.tasks.collect import IDLE_S, INTERVAL_S, Collector
from patterns.tasks.job import Channels
from patterns.tasks.work import Outcome, Worker

log = logging.getLogger("patterns.tasks.streams")
PREFETCH = 10  # entries per read: tens of ms of hashing
CLAIM_IDLE_S = 10.0
WINDOW = 1_000
CHUNK = 100  # tasks appended per round trip
BLOCK_MS = 1_000  # a blocking read never outlasts the client's socket timeout
MAXLEN = 100_000  # the reports, results, control and dead-letter streams keep about this many


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """The book's group, created with the stream if missing, at its start (an entry that is
    there already, added before any worker came, must still be done)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):  # it exists: fine
            raise


# ---- producer ---------------------------------------------------------------------------


async def undone(redis: aioredis.Redis, stream: str, group: str) -> int:
    """Tasks the group has not finished: pending + lag, or the stream's length."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # the stream is gone (Redis restarted without it): nothing undone
        return 0
    for info in groups:
        if info["name"].decode() == group and info.get("lag") is not None:
            return int(info["pending"]) + int(info["lag"])
    return await redis.xlen(stream)  # our workers delete what they did: what is left is undone


async def producer(
    channels: Channels,
    job: wire.Job,
    tasks: Iterable[wire.Task],
    *,
    window: int = WINDOW,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> int:
    """Append the job's tasks until all are sent or the word is found; how many were sent."""
    cracked = asyncio.Event()
    hear = lambda notice: wire.cracks(notice, job.searchHash) and cracked.set()  # noqa: E731
    async with clients.redis(url) as redis, listening(redis, channels.control, hear):
        await ensure_group(redis, channels.tasks, channels.group)
        await redis.xadd(channels.reports, {"report": wire.encode(job)}, maxlen=MAXLEN)
        on_event("ready", job=job.job, tasks=job.tasks)
        sent, bodies = 0, (wire.encode_task(task) for task in tasks)
        while not cracked.is_set() and (chunk := list(islice(bodies, min(CHUNK, window)))):
            while await undone(redis, channels.tasks, channels.group) >= window:  # noqa: ASYNC110 (the broker's count)
                await asyncio.sleep(0.05)
            async with redis.pipeline(transaction=False) as pipe:  # one round trip
                for body in chunk:
                    pipe.xadd(channels.tasks, {"task": body})
                await pipe.execute()
            sent += len(chunk)
        await redis.xadd(channels.reports, {"report": wire.encode(wire.Sent(job.job, sent))})
    on_event("result", job=job.job, sent=sent)
    return sent


async def last_id(redis: aioredis.Redis, stream: str) -> bytes:
    """The id of the stream's newest entry: read after it to get only what comes next."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else b"0-0"


@contextlib.asynccontextmanager
async def listening(
    redis: aioredis.Redis, stream: str, on_notice: Callable[[bytes], object]
) -> AsyncIterator[None]:
    """Hear the collector's notices (entries of the control stream) while the block runs."""

    async def listen(after: bytes) -> None:
        while True:
            for _, entries in await redis.xread({stream: after}, block=BLOCK_MS):
                for after, fields in entries:  # noqa: B007 (the cursor moves on)
                    on_notice(fields.get(b"notice", b""))

    hearing = asyncio.create_task(listen(await last_id(redis, stream)))
    try:
        yield
    finally:
        hearing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hearing


# ---- worker -----------------------------------------------------------------------------


async def worker(
    channels: Channels,
    work: Worker,
    *,
    prefetch: int = PREFETCH,
    claim_idle: float = CLAIM_IDLE_S,
    exit_after: int | None = None,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> None:
    """Read entries as a member of the group; commit each read's outcomes with their acks."""
    tasks, group, me = channels.tasks, channels.group, work.name
    async with clients.redis(url) as redis, listening(redis, channels.control, work.learn):
        await ensure_group(redis, tasks, group)
        on_event("ready", name=me)
        cursor, claim_at = "0", time.monotonic() + claim_idle / 2  # our own pending first
        while work.tally.tasks + work.tally.dead != exit_after:
            if cursor == ">" and time.monotonic() >= claim_at:  # entries idle for too long:
                claim_at = time.monotonic() + claim_idle / 2  # whoever had them died
                _, entries, _ = await redis.xautoclaim(
                    tasks, group, me, min_idle_time=int(claim_idle * 1000), count=prefetch
                )
                fresh = False
            else:
                try:
                    read = await redis.xreadgroup(group, me, {tasks: cursor}, prefetch, BLOCK_MS)
                except ResponseError as error:  # NOGROUP: the stream or its group is gone
                    log.warning("%s: %s; creating the group again", tasks, error)
                    await ensure_group(redis, tasks, group)
                    continue
                entries, fresh = (read[0][1] if read else []), cursor == ">"
                if cursor == "0" and not entries:  # ours are done: new entries from now on
                    cursor = ">"
            done = []
            for entry_id, fields in entries:  # fields is None for an entry deleted meanwhile
                attempts = 1 if fresh else await deliveries(redis, channels, entry_id)
                fields = fields or {}
                outcome = await process(work, fields, attempts)
                done.append((entry_id, fields.get(b"task", b""), outcome))
            if done:
                await commit(redis, channels, me, done)
        on_event("result", name=me, **work.tally.as_dict())


async def deliveries(redis: aioredis.Redis, channels: Channels, entry_id: bytes) -> int:
    """How many times the group has delivered this entry (its pending-entries list says)."""
    pending = await redis.xpending_range(channels.tasks, channels.group, entry_id, entry_id, 1)
    return pending[0]["times_delivered"] if pending else 1


async def process(work: Worker, fields: dict[bytes, bytes], attempts: int) -> Outcome:
    if b"task" not in fields:  # an entry someone else wrote, or one deleted while pending
        names = ", ".join(sorted(name.decode(errors="replace") for name in fields))
        return work.set_aside(f"no field 'task' in the entry, only: {names or 'none'}", attempts)
    return await work.process(fields[b"task"], attempts)


async def commit(
    redis: aioredis.Redis,
    channels: Channels,
    worker: str,
    done: list[tuple[bytes, bytes, Outcome]],
) -> None:
    """What the entries produced, their acks and their deletion, in one MULTI/EXEC."""
    async with redis.pipeline(transaction=True) as pipe:
        for entry_id, task, outcome in done:
            if outcome.result is not None:  # the book's `Found: <word>`
                pipe.xadd(channels.results, {"result": outcome.result}, maxlen=MAXLEN)
            if outcome.dead is not None:
                letter = {
                    "task": task,
                    "reason": outcome.dead.reason,
                    "worker": worker,
                    "id": entry_id,
                }
                pipe.xadd(channels.dead, letter, maxlen=MAXLEN)
            pipe.xadd(channels.reports, {"report": outcome.report}, maxlen=MAXLEN)
        ids = [entry_id for entry_id, _, _ in done]
        pipe.xack(channels.tasks, channels.group, *ids)
        pipe.xdel(channels.tasks, *ids)
        await pipe.execute()


# ---- collector --------------------------------------------------------------------------


async def collector(
    channels: Channels,
    *,
    idle_timeout: float = IDLE_S,
    interval: float = INTERVAL_S,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> dict:
    """Read the results and reports streams from now on until the job is accounted for;
    tell the workers when the word is found."""
    collected = Collector(on_event)
    async with clients.redis(url) as redis:
        cursors = {
            name: await last_id(redis, name) for name in (channels.results, channels.reports)
        }
        ledger = Appended(redis, channels.reports)
        await ledger.check(read=0)
        on_event("ready", results=channels.results, reports=channels.reports)
        reading = asyncio.create_task(collected.wait(idle_timeout, interval))
        while not reading.done():
            for stream, entries in await redis.xread(cursors, count=1_000, block=BLOCK_MS):
                cursors[stream.decode()] = entries[-1][0]
                ledger.read += len(entries) if stream.decode() == channels.reports else 0
                for _, fields in entries:
                    if (notice := collected.take(next(iter(fields.values()), b""))) is not None:
                        notice_fields = {"notice": wire.encode(notice)}
                        await redis.xadd(channels.control, notice_fields, maxlen=MAXLEN)
            if not await ledger.check() and collected.outstanding:
                collected.lost(f"{channels.reports} lost entries (Redis restarted without them?)")
        await reading
    return collected.result()


class Appended:
    """Did Redis lose entries of a stream we read? A stream counts every entry ever added
    to it (XINFO STREAM's entries-added); if it counts fewer than it had when we began plus
    what we read since, the stream was lost and made anew."""

    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis, self.stream = redis, stream
        self.at_start = 0
        self.read = 0
        self.checked_at = 0.0

    async def added(self) -> int:
        try:
            return int((await self.redis.xinfo_stream(self.stream))["entries-added"])
        except ResponseError:  # no such stream (yet, or any more)
            return 0

    async def check(self, read: int | None = None, every_s: float = 1.0) -> bool:
        """False if entries were lost; looks at most every `every_s` seconds."""
        if read is not None:  # the start
            self.at_start, self.read = await self.added(), read
            return True
        if time.monotonic() - self.checked_at < every_s:
            return True
        self.checked_at = time.monotonic()
        return await self.added() >= self.at_start + self.read
