"""The hashsum cracker over Redis Streams: a consumer group shares out one stream of tasks.

The producer appends each task to the stream `tasks_stream` (field `task`); the workers
read it as members of the consumer group `workers_group`, so each entry goes to one of
them; an entry stays *pending* (in the group's pending-entries list, with its consumer,
idle time and delivery count) until that worker acks it. A worker publishes its result to
`results_stream` (field `result`) and acks the task in one MULTI/EXEC transaction: either
both happen or neither, so a worker that dies leaves its task pending, never half done.
It reads up to `--prefetch` entries at once and commits a read's entries together (a
found word at once), in a task of its own while it hashes the next read: the round
trips to Redis do not stand between two tasks.

    python -m patterns.tasks collector --transport streams
    python -m patterns.tasks worker --transport streams --name w1   # a stable name per worker
    python -m patterns.tasks producer --transport streams --max-length 4 --word node

What the group does not do by itself, each worker does:

* on start (and after a reconnect) it first reads its *own* pending entries (XREADGROUP
  from id 0): a restarted worker finishes what it had taken;
* every so often it reclaims entries another consumer left pending for longer than
  `--claim-idle` seconds (XAUTOCLAIM): a dead worker's tasks are taken over. The idle
  time must be longer than one read's tasks take (a worker reads up to `--prefetch`
  entries at once), or a slow worker's task is done twice;
* delivery counts (XPENDING) bound retries: an entry delivered more than `--max-attempts`
  times, or one that is not a task, goes to the dead-letter stream (`tasks_stream.dead`)
  with the reason, and is acked;
* if the group is gone (the stream was deleted, or Redis restarted without its data), it
  creates it again, from the stream's start: whatever the stream holds then was never
  delivered to the group. What the lost stream held is lost: a collector started with
  `--idle-timeout` gives up waiting for it and names it in its ledger.

Streams are logs: nothing leaves them when it is read. So every XADD trims
(MAXLEN ~), and the producer keeps at most `--window` tasks undone (XINFO GROUPS:
pending + lag), far below the bound, so trimming never removes a task nobody has done.
"""

import argparse
import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from patterns import config, processes
from patterns.tasks import wire
from patterns.tasks.collect import collect
from patterns.tasks.job import Channels, plan
from patterns.tasks.work import Outcome, Worker

log = logging.getLogger("patterns.tasks.streams")
MAXLEN = {"tasks": 100_000, "results": 100_000, "dead": 10_000, "control": 1_000}
BLOCK_MS = 1_000  # a blocking read never outlasts the client's socket timeout (5 s)
CHUNK = 100  # tasks appended per round trip
WINDOW_CHECK_S = 0.05  # how often a held-back producer looks at the group's backlog again
RECONNECT_S = (0.1, 0.2, 0.5, 1.0, 2.0)
BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


def client() -> aioredis.Redis:
    return aioredis.from_url(config.REDIS_URL)


async def reconnecting(attempt: Callable[[], Awaitable[Any]]) -> Any:
    """`attempt()` until it does not fail for want of Redis, waiting longer each time."""
    failures = 0
    while True:
        try:
            return await attempt()
        except BROKEN as error:
            wait = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            failures += 1
            log.warning("Redis unreachable (%s): again in %g s", error, wait)
            await asyncio.sleep(wait)


async def ensure_group(redis: aioredis.Redis, stream: str, group: str, start: str = "$") -> None:
    """The book's group, created at `start` (`$`: new entries only; `0`: every entry), with
    the stream if missing."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
        await redis.xgroup_create(stream, group, id=start, mkstream=True)


def gone(error: ResponseError) -> bool:
    """Did a command fail because the stream or its group no longer exists? (NOGROUP: a
    read; UNBLOCKED: a blocked read whose stream was deleted; no such key: XINFO)"""
    return str(error).startswith(("NOGROUP", "UNBLOCKED", "no such key"))


async def last_id(redis: aioredis.Redis, stream: str) -> str:
    """The id of the stream's newest entry: read after it to get only what comes next."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


async def notices(redis: aioredis.Redis, stream: str, on_notice: Callable[[bytes], None]) -> None:
    """Follow the control stream forever (run it as a task)."""
    after = await reconnecting(lambda: last_id(redis, stream))
    while True:
        try:
            read = await redis.xread({stream: after}, block=BLOCK_MS)
        except BROKEN:
            await asyncio.sleep(RECONNECT_S[-1])
            continue
        for _, entries in read:
            for entry_id, fields in entries:
                after = entry_id
                on_notice(fields.get(b"notice", b""))


# ---- producer ---------------------------------------------------------------------------


async def backlog(redis: aioredis.Redis, stream: str, group: str) -> int:
    """Tasks the group has not finished: pending (delivered, unacked) + lag (undelivered)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as error:  # deleted, or Redis restarted without its data
        if not gone(error):
            raise
        return 0
    for info in groups:
        if info["name"].decode() == group:
            return int(info["pending"]) + int(info.get("lag") or 0)
    return 0


async def producer(options: argparse.Namespace) -> None:
    job, tasks = plan(options.hash, options.max_length, options.alphabet, options.batch_size)
    bodies = (wire.encode_task(task) for task in tasks)
    chunk: list[bytes] = []  # appended, not yet confirmed: appended again after a failure
    cracked = asyncio.Event()
    redis = client()
    listener = None
    try:
        await reconnecting(lambda: ensure_group(redis, options.tasks, options.group))
        listener = asyncio.create_task(
            notices(
                redis, options.control, lambda d: wire.cracks(d, job.searchHash) and cracked.set()
            )
        )
        processes.report("ready", job=job.job, tasks=job.tasks)
        await reconnecting(
            lambda: redis.xadd(
                options.results, {"result": wire.encode(job)}, maxlen=MAXLEN["results"]
            )
        )
        sent = 0
        while not cracked.is_set():
            chunk = chunk or list(itertools.islice(bodies, min(CHUNK, options.window)))
            if not chunk:
                break
            try:
                if await backlog(redis, options.tasks, options.group) >= options.window:
                    await asyncio.sleep(WINDOW_CHECK_S)
                    continue
                async with redis.pipeline(transaction=False) as pipe:
                    for body in chunk:
                        pipe.xadd(options.tasks, {"task": body}, maxlen=MAXLEN["tasks"])
                    await pipe.execute()
                sent, chunk = sent + len(chunk), []
            except BROKEN as error:  # the chunk goes again: at least once
                log.warning("Redis unreachable (%s): retrying", error)
                await asyncio.sleep(RECONNECT_S[2])
        if cracked.is_set():
            log.info("the word is found: stopping after %d of %d tasks", sent, job.tasks)
        await reconnecting(
            lambda: redis.xadd(
                options.results,
                {"result": wire.encode(wire.Sent(job.job, sent))},
                maxlen=MAXLEN["results"],
            )
        )
        log.info("sent %d tasks of job %s", sent, job.job)
        processes.report("result", job=job.job, sent=sent)
    finally:
        if listener is not None:
            listener.cancel()
        await redis.aclose()


# ---- worker -----------------------------------------------------------------------------


async def deliveries(
    redis: aioredis.Redis, options: argparse.Namespace, ids: list[bytes]
) -> dict[bytes, int]:
    """How many times each of these pending entries of ours has been delivered."""
    if not ids:
        return {}
    found = await redis.xpending_range(
        options.tasks,
        options.group,
        min=ids[0],
        max=ids[-1],
        count=len(ids) * 2 + 10,
        consumername=options.name,
    )
    return {entry["message_id"]: entry["times_delivered"] for entry in found}


@dataclass
class Finished:
    """An entry processed, not yet committed."""

    entry_id: bytes
    data: bytes
    outcome: Outcome
    attempts: int


async def finish(
    work: Worker, entry_id: bytes, fields: dict[bytes, bytes] | None, attempts: int
) -> Finished:
    """Process one entry: what to publish for it (committed later, with others)."""
    data = b"" if fields is None else fields.get(b"task", b"")
    if fields is None:  # trimmed away while pending: nothing left to do but ack it
        log.warning("pending entry %s was trimmed from the stream: acked", entry_id)
        outcome = Outcome([])
    elif b"task" not in fields:
        names = ", ".join(sorted(name.decode(errors="replace") for name in fields))
        outcome = work.set_aside(f"no field 'task' in the entry, only: {names}", attempts)
    else:
        outcome = await work.process(data, attempts)
    return Finished(entry_id, data, outcome, attempts)


async def commit(
    redis: aioredis.Redis, options: argparse.Namespace, worker: str, done: list[Finished]
) -> None:
    """Publish what entries produced and ack them in one MULTI/EXEC: together or not at all."""
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for entry in done:
                for frame in entry.outcome.results:
                    pipe.xadd(options.results, {"result": frame}, maxlen=MAXLEN["results"])
                if entry.outcome.dead is not None:
                    letter = {
                        "task": entry.data,
                        "reason": entry.outcome.dead.reason,
                        "worker": worker,
                        "attempts": entry.attempts,
                        "id": entry.entry_id,
                    }
                    pipe.xadd(options.dead, letter, maxlen=MAXLEN["dead"])
            pipe.xack(options.tasks, options.group, *(entry.entry_id for entry in done))
            await pipe.execute()
    except BROKEN as error:  # still pending: done again after a reconnect or a reclaim
        log.warning("could not commit %d entries (%s): they stay pending", len(done), error)


Entry = tuple[bytes, dict[bytes, bytes] | None, int]  # id, fields, which delivery it is


async def own_pending(redis: aioredis.Redis, options: argparse.Namespace) -> list[Entry]:
    """Entries delivered to this consumer and never acked: it died, or lost its connection."""
    read = await redis.xreadgroup(options.group, options.name, {options.tasks: "0"}, count=100)
    entries = read[0][1] if read else []
    if entries:
        log.info("finishing %d tasks left pending to %s", len(entries), options.name)
    counts = await deliveries(redis, options, [entry_id for entry_id, _ in entries])
    return [(entry_id, fields, counts.get(entry_id, 1)) for entry_id, fields in entries]


async def reclaim(redis: aioredis.Redis, options: argparse.Namespace) -> list[Entry]:
    """Entries other consumers left pending for longer than `--claim-idle`: now ours."""
    _, claimed, trimmed = await redis.xautoclaim(
        options.tasks,
        options.group,
        options.name,
        min_idle_time=int(options.claim_idle * 1000),
        count=10,
    )
    if trimmed:
        log.warning("%d pending tasks were trimmed before anyone acked them", len(trimmed))
    if claimed:
        log.info("reclaimed %d tasks idle for over %g s", len(claimed), options.claim_idle)
    counts = await deliveries(redis, options, [entry_id for entry_id, _ in claimed])
    return [(entry_id, fields, counts.get(entry_id, 1)) for entry_id, fields in claimed]


async def new_entries(
    redis: aioredis.Redis, options: argparse.Namespace, block_ms: int, count: int
) -> list[Entry]:
    """Up to `count` new entries for this consumer, waiting at most `block_ms` for one.

    One read per few tasks: the worker does not wait a round trip to Redis before each.
    """
    read = await redis.xreadgroup(
        options.group, options.name, {options.tasks: ">"}, count=count, block=block_ms
    )
    return [(entry_id, fields, 1) for _, entries in read for entry_id, fields in entries]


async def worker(options: argparse.Namespace) -> None:
    work = Worker(options.name, options.max_attempts)
    redis = client()
    listener = None
    # a blocked read must not delay a reclaim that is due
    block_ms = int(min(BLOCK_MS, options.claim_idle * 1000 / 2))
    try:
        names = (options.tasks, options.group)
        await reconnecting(lambda: ensure_group(redis, *names))
        listener = asyncio.create_task(notices(redis, options.control, work.learn))
        processes.report("ready", name=options.name)
        log.info("%s reads %s as a member of %s", options.name, options.tasks, options.group)
        own_first = True  # at start, and after a lost connection
        next_claim = time.monotonic() + options.claim_idle / 2
        committed: asyncio.Task | None = None  # the last commit

        def wanted() -> int:  # up to --prefetch entries, never more than --exit-after needs
            if options.exit_after is None:
                return options.prefetch
            return min(options.prefetch, options.exit_after - work.tally.tasks)

        while work.tally.tasks != options.exit_after:
            try:
                if own_first:
                    entries = await own_pending(redis, options)
                    own_first = bool(entries)
                elif time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + options.claim_idle / 2
                    entries = await reclaim(redis, options)
                else:
                    entries = await new_entries(redis, options, block_ms, wanted())
                done: list[Finished] = []
                for number, (entry_id, fields, attempts) in enumerate(entries, 1):
                    done.append(await finish(work, entry_id, fields, attempts))
                    last = number == len(entries) or work.tally.tasks == options.exit_after
                    if last or done[-1].outcome.found:  # a found word goes out at once
                        if committed is not None:
                            # one commit in flight at most: they land in order, and a
                            # worker that dies leaves no more than one read's entries pending
                            await committed
                        committed = asyncio.create_task(commit(redis, options, work.name, done))
                        done = []
                    if last:
                        break
            except BROKEN as error:
                log.warning("Redis unreachable (%s): reconnecting", error)
                own_first = True
                await asyncio.sleep(RECONNECT_S[2])
            except ResponseError as error:
                if not gone(error):
                    raise
                # the stream was deleted, or Redis restarted without its data: none of
                # what the stream holds now was delivered to this group, so from its start
                log.warning("%s has no group %s (%s): created again", *names, error)
                await reconnecting(lambda: ensure_group(redis, *names, start="0"))
        if committed is not None:
            await committed  # done: every finished entry is committed first
        processes.report("result", name=options.name, **work.tally.as_dict())
    finally:
        if listener is not None:
            listener.cancel()
        await redis.aclose()


# ---- collector --------------------------------------------------------------------------


async def results(redis: aioredis.Redis, stream: str, after: str) -> AsyncIterator[list[bytes]]:
    """Batches of results after entry `after`; a lost connection just resumes from there."""
    while True:
        try:
            read = await redis.xread({stream: after}, count=1_000, block=BLOCK_MS)
        except BROKEN as error:
            log.warning("Redis unreachable (%s): reconnecting", error)
            await asyncio.sleep(RECONNECT_S[2])
            continue
        batch = []
        for _, entries in read:
            for entry_id, fields in entries:
                after = entry_id
                batch.append(next(iter(fields.values()), b""))
        if batch:
            yield batch


async def collector(options: argparse.Namespace) -> None:
    redis = client()
    try:
        after = await reconnecting(lambda: last_id(redis, options.results))
        processes.report("ready", results=options.results)

        async def broadcast(notice: wire.Cracked) -> None:
            await reconnecting(
                lambda: redis.xadd(
                    options.control, {"notice": wire.encode(notice)}, maxlen=MAXLEN["control"]
                )
            )

        result = await collect(
            results(redis, options.results, after),
            broadcast,
            processes.report,
            options.idle_timeout,
            options.interval,
        )
        processes.report("result", **result)
    finally:
        await redis.aclose()


async def delete(channels: Channels) -> None:
    """Delete a run's streams (never the book's: only unique names)."""
    redis = client()
    try:
        await redis.delete(channels.tasks, channels.results, channels.dead, channels.control)
    finally:
        await redis.aclose()


async def add_raw(channels: Channels, entries: list[dict[str, bytes]]) -> None:
    """Append entries to the task stream as they are: how a poison task gets there."""
    redis = client()
    try:
        await ensure_group(redis, channels.tasks, channels.group)
        for fields in entries:
            await redis.xadd(channels.tasks, fields, maxlen=MAXLEN["tasks"])
    finally:
        await redis.aclose()


async def dead_letters(channels: Channels) -> list[dict[str, Any]]:
    """The dead-letter stream's entries (reading a stream takes nothing away)."""
    redis = client()
    try:
        entries = await redis.xrange(channels.dead)
    finally:
        await redis.aclose()
    return [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in entries]


async def pending(channels: Channels) -> dict[str, Any]:
    """The group's pending-entries list: XPENDING's summary and its entries."""
    redis = client()
    try:
        summary = await redis.xpending(channels.tasks, channels.group)
        entries = await redis.xpending_range(channels.tasks, channels.group, "-", "+", 100)
    finally:
        await redis.aclose()
    return {
        "pending": summary["pending"],
        "consumers": {c["name"].decode(): c["pending"] for c in summary["consumers"]},
        "entries": [
            {
                "id": e["message_id"].decode(),
                "consumer": e["consumer"].decode(),
                "idle_ms": e["time_since_delivered"],
                "deliveries": e["times_delivered"],
            }
            for e in entries
        ],
    }
