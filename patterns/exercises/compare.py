"""The exercises of notebook 11 (choosing a transport), checked against Redis.

11.1 runs the answer against a stream of the checker's own on the shared Redis, read by a
slow consumer of its own, and deleted at the end; 11.2 against a private `redis-server`
(`patterns.faults.RedisServer`) that it crashes and starts again, then kills and removes.
"""

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from patterns import clients
from patterns.compare.faults import completely, private_redis
from patterns.exercises.checking import Wrong, exercise
from patterns.exercises.reqrep import within

SETTLE_S = 10.0  # how long the checker waits for its own consumer or server
# No socket timeout: with one, redis-py sends each command under asyncio.wait_for, which on
# Python 3.11 can lose a cancellation that arrives as the send completes, and a loop the
# checker stops would go on (as in `patterns.reqrep.redis_streams`).
CLIENT = {"socket_timeout": None}


# ---- 11.1: backpressure for a Redis stream -----------------------------------------------


async def unfinished(redis: aioredis.Redis, stream: str, group: str) -> int | None:
    """The group's entries not yet delivered (lag) plus delivered, not acknowledged
    (pending), read in one command; None if Redis cannot count the lag."""
    for info in await redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            return None if info["lag"] is None else info["lag"] + info["pending"]
    raise LookupError(f"no group {group!r} on {stream!r}")


async def caught_up(redis: aioredis.Redis, stream: str, group: str) -> bool:
    """Has the group been given the stream's last entry, and acknowledged all it was given?
    (Not `lag`, which still counts the entries trimmed before they were read.)"""
    last = (await redis.xinfo_stream(stream))["last-generated-id"]
    for info in await redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            return info["pending"] == 0 and info["last-delivered-id"] == last
    return False


def misplaced(stored: list[bytes | None], payloads: list[bytes]) -> str:
    """What is wrong with the stream's `data` fields, given that they are not `payloads`."""
    if None in stored:
        return f"entry {stored.index(None)} of the stream has no field data"
    counts = Counter(stored)
    if twice := [p for p in payloads if counts[p] > 1]:
        return f"{len(twice)} payloads were appended more than once (the first: {twice[0]!r})"
    if missing := [p for p in payloads if not counts[p]]:
        return f"{len(missing)} of the {len(payloads)} payloads are not in the stream"
    if len(stored) != len(payloads):
        return f"the stream holds {len(stored)} entries for {len(payloads)} payloads"
    first = next(n for n, (s, p) in enumerate(zip(stored, payloads, strict=True)) if s != p)
    return f"entry {first} is {stored[first]!r}, not {payloads[first]!r}: append them in order"


@exercise("11.1")
async def bounded_publisher(answer: Any) -> str:
    """300 payloads, a limit of 20, a consumer that takes 25 ms per read of 5 entries (about
    200 entries/s), and a sampler that keeps the most unfinished work it saw."""
    stream, group = f"exercise:{uuid.uuid4().hex[:8]}", "slow"
    payloads, limit = [b"m%d" % n for n in range(300)], 20
    got: list[bytes | None] = []
    most = 0
    async with clients.redis(**CLIENT) as redis:

        async def consume() -> None:
            while True:
                for _, entries in await redis.xreadgroup(
                    group, "consumer", {stream: ">"}, count=5, block=100
                ):
                    await asyncio.sleep(0.025)  # the work
                    got.extend(fields.get(b"data") for _, fields in entries)
                    await redis.xack(stream, group, *(entry_id for entry_id, _ in entries))

        async def sample() -> None:
            nonlocal most
            while True:
                if (now := await unfinished(redis, stream, group)) is not None:
                    most = max(most, now)
                await asyncio.sleep(0.002)

        tasks: list[asyncio.Task] = []
        try:
            await redis.xgroup_create(stream, group, id="$", mkstream=True)
            tasks = [asyncio.create_task(consume()), asyncio.create_task(sample())]
            await within(answer(redis, stream, group, payloads, limit), "publish_bounded")
            with contextlib.suppress(TimeoutError):  # the consumer catches up with the rest
                async with asyncio.timeout(SETTLE_S):
                    while not await caught_up(redis, stream, group):  # noqa: ASYNC110 (Redis's count)
                        await asyncio.sleep(0.01)
            for task in tasks:
                if task.done():  # it failed: say so rather than judge without it
                    task.result()
            info = await redis.xinfo_stream(stream)
            stored = [fields.get(b"data") for _, fields in await redis.xrange(stream)]
        finally:

            async def clean_up() -> None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await redis.delete(stream)

            await completely(clean_up())
    if info["length"] < info["entries-added"]:
        raise Wrong(
            f"the stream kept {info['length']} of the {info['entries-added']} entries "
            "appended: trimming loses messages; wait instead"
        )
    if stored != payloads:
        raise Wrong(misplaced(stored, payloads))
    if got != payloads:
        raise Wrong("the consumer did not get every payload once, in order")
    if most > limit:
        raise Wrong(
            f"the group had {most} entries not yet done at one point, over the limit of "
            f"{limit}: wait while lag + pending is at the limit"
        )
    if most < limit // 2:
        raise Wrong(
            f"the group never had more than {most} entries not yet done: append while "
            f"below the limit of {limit}, and wait only at it"
        )
    return (
        f"{len(payloads)} payloads appended in order to a slow group, never more than "
        f"{limit} entries not yet done (lag + pending)"
    )


# ---- 11.2: a stream that survives a crash ------------------------------------------------


@exercise("11.2")
async def durable_stream(answer: Any) -> str:
    """A private Redis without its append-only file: the answer turns it on; 500 entries are
    appended, Redis is killed with SIGKILL and started again with the settings it had."""
    stream, count = "exercise:crash", 500
    async with private_redis(appendonly=False) as server:
        async with clients.redis(server.url, **CLIENT) as redis:
            await within(answer(redis), "make_durable")
            info = await redis.info("persistence")
            settings = await redis.config_get("append*")
            if settings["appendonly"] != "yes":
                raise Wrong("appendonly is still no: turn the append-only file on")
            if settings["appendfsync"] == "no":
                raise Wrong(
                    "appendfsync is no: the kernel then decides when the file reaches the "
                    "disk, and a power cut loses up to about 30 s of writes; keep everysec"
                )
            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                raise Wrong(
                    "it returned while Redis was still writing its first append-only file, "
                    "when a crash would lose everything: wait until aof_rewrite_in_progress "
                    "and aof_rewrite_scheduled are 0"
                )
            for n in range(count):
                await redis.xadd(stream, {"n": n})
            with contextlib.suppress(TimeoutError):  # acknowledged, and written to the file
                async with asyncio.timeout(SETTLE_S):
                    while (await redis.info("persistence"))["aof_buffer_length"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
        await server.kill()
        server.appendonly = True  # what a redis.conf would say at the next start
        server.settings = ("--appendfsync", settings["appendfsync"])
        await server.start()
        async with clients.redis(server.url, **CLIENT) as redis:
            kept = [int(fields[b"n"]) for _, fields in await redis.xrange(stream)]
    if len(kept) < count:
        raise Wrong(
            f"the restarted Redis had {len(kept)} of the {count} acknowledged entries: "
            "they were not in its append-only file when it crashed"
        )
    if kept != list(range(count)):
        raise Wrong(f"the restarted Redis had {len(kept)} entries, not the {count} appended")
    return (
        f"all {count} acknowledged entries were there, in order, after a SIGKILL and a "
        f"restart with appendfsync {settings['appendfsync']}"
    )
