"""Faults of the return address, staged against the real brokers (notebook 10).

Each scenario starts its own repliers on a request queue or stream (the default one
unless told otherwise), runs requesters against them, breaks something, and returns what
every side saw, so that a notebook can print it and a test can assert it. A scenario
stops its repliers before it returns; stopped, a replier finishes the requests in hand,
then reports what it did.

Where a scenario must know that the repliers hold the requests sent so far, it sends one
quick request after them and waits for its answer: requests are handed out in the order
they reached the broker, so by then all the earlier ones have been. (Over Redis, requests
sent at once travel over several connections and may overtake each other: `in_order`
sends each once the one before it has reached the broker.)
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika

from patterns import clients, config, processes
from patterns.brokers import quieted
from patterns.faults import Proxy
from patterns.reqrep import Requester, RequestFailed, amqp, connect, load, redis_streams

DEFAULT_ADDRESS = {"amqp": amqp.REQUESTS_QUEUE, "redis": redis_streams.REQUESTS_STREAM}


def kind(transport: str) -> str:
    """The replier that serves a requester: AMQP serves both AMQP requesters."""
    return "amqp" if transport.startswith("amqp") else transport


def default(transport: str) -> str:
    return DEFAULT_ADDRESS[kind(transport)]


async def start_replier(transport: str, address: str, *options: str) -> processes.Child:
    return await load.start_replier(transport, address, *options)


async def in_order(asker: Requester, requests: list[Any]) -> list[asyncio.Task]:
    """Start the requests one after the other, each once the one before has been sent."""
    started = []
    for data in requests:
        started.append(asyncio.create_task(asker.request(data)))
        await sent(asker, asker.counts.sent + 1)
    return started


async def sent(asker: Requester, count: int) -> None:
    """Until `count` requests have been handed over to the broker."""
    while asker.counts.sent < count:  # noqa: ASYNC110 (a count, not an event)
        await asyncio.sleep(0.005)


async def outcomes(requests: list[asyncio.Task]) -> list[Any]:
    """Each request's reply, or the name of the exception it failed with."""
    results = await asyncio.gather(*requests, return_exceptions=True)
    return [type(r).__name__ if isinstance(r, RequestFailed) else r for r in results]


async def slow_replier(transport: str, address: str | None = None) -> dict:
    """One replier that takes one request at a time and needs 0.5 s for each; five requests
    sent together, each with a 1.25 s timeout.

    The first two are answered in time. The third is taken just before its deadline and
    answered after it: its reply comes late, and is dropped. The last two wait behind it
    until their requester has given up: the broker drops them (AMQP expiration), or the
    replier skips them (Redis), so nobody computes answers that nobody waits for.
    """
    address = address or default(transport)
    async with processes.children() as started:
        started.append(await start_replier(transport, address, "--prefetch", "1"))
        async with connect(transport, address, timeout=1.25) as asker:
            five = await in_order(asker, [{"a": n, "b": 0, "delay": 500} for n in range(5)])
            results = await outcomes(five)
            await asker.request({"a": 0, "b": 0}, timeout=5)  # after the late reply
            late = asker.counts.late
    return {"results": results, "late": late, "replier": await started[0].next_report("result")}


async def replier_dies(transport: str, address: str | None = None) -> dict:
    """Two repliers share twenty requests that take 1 s each; one is killed (kill -9)
    while it holds some of them.

    AMQP redelivers a dead consumer's unacknowledged requests to the replier left; over
    Redis they stay pending in the group until the other replier claims them (here after
    they have been idle for 1 s). Either way every request is answered. A request that
    the dead replier had answered but not yet acknowledged is answered a second time:
    its requester drops the second reply as late. Delivery is at least once. The time
    from the kill until every request is answered says how soon the survivor took over.
    """
    address = address or default(transport)
    options = ("--claim-after", "1") if transport == "redis" else ()
    async with processes.children() as started:
        started += [await start_replier(transport, address, *options) for _ in range(2)]
        async with connect(transport, address, timeout=10) as asker:
            twenty = [
                asyncio.create_task(asker.request({"a": n, "b": 0, "delay": 1_000}))
                for n in range(20)
            ]
            await sent(asker, 20)
            await asker.request({"a": 0, "b": 0})  # the twenty have been handed out
            doomed = await holder(transport, address, started)
            doomed.kill()
            killed = time.monotonic()
            results = await outcomes(twenty)
            all_answered_s = time.monotonic() - killed
            late = asker.counts.late
    survivor = next(child for child in started if child is not doomed)
    report = await survivor.next_report("result")
    return {
        "results": results,
        "late": late,
        "survivor": report,
        "all answered after kill s": round(all_answered_s, 2),
    }


async def holder(transport: str, address: str, started: list[processes.Child]) -> processes.Child:
    """The replier holding the most requests (AMQP hands them out in turn: either)."""
    if kind(transport) != "redis":
        return started[0]
    async with clients.redis() as redis:
        pending = await redis.xpending_range(address, redis_streams.GROUP, "-", "+", 1_000)
    held = [entry["consumer"].decode() for entry in pending]
    return max(started, key=lambda child: held.count(child.ready["consumer"]))


async def requester_restarts(transport: str, address: str | None = None) -> dict:
    """A requester has five requests out (0.5 s each) when its connection drops, as if its
    process had crashed; a new requester starts. Where do the five replies go?

    The old requester's pending requests fail (ChannelClosed): at once over AMQP, whose
    reply queue went with the connection; over Redis once the requester gives up on the
    connection (its patience, here half a second). Its replies, when the replier sends
    them: over AMQP with a reply queue, they come back to the replier (`mandatory`), which
    counts them; over direct reply-to, RabbitMQ drops them; over Redis, they wait in the
    old requester's list until it expires.
    """
    address = address or default(transport)
    url = config.AMQP_URL if kind(transport) == "amqp" else config.REDIS_URL
    async with processes.children() as started:
        started.append(await start_replier(transport, address))
        # the clients say, each in its own way, that the broker went away: no news here
        with silenced():
            async with (
                Proxy(url) as proxy,
                connect(transport, address, timeout=10, url=proxy.url, patience=0.5) as first,
            ):
                five = [
                    asyncio.create_task(first.request({"a": n, "b": 0, "delay": 500}))
                    for n in range(5)
                ]
                await sent(first, 5)
                await first.request({"a": 0, "b": 0})  # the five are with the replier
                await proxy.cut()
                cut = time.monotonic()
                old_saw = await outcomes(five)
                failed_after_s = time.monotonic() - cut
                reply_to = first.reply_to  # type: ignore[attr-defined]
        async with connect(transport, address, timeout=10) as second:
            # answered after the five replies were sent, wherever they went
            new_got = await second.request({"a": 2, "b": 2, "delay": 700})
        waiting = ttl_ms = 0
        if transport == "redis":
            async with clients.redis() as redis:
                waiting, ttl_ms = await redis.llen(reply_to), await redis.pttl(reply_to)
                await redis.delete(reply_to)
    report = await started[0].next_report("result")
    return {
        "old requester": old_saw,
        "new requester": new_got,
        "returned to the replier": report["undeliverable"],
        "waiting in the old list": waiting,
        "list expires in ms": ttl_ms,
        "old requester failed after s": round(failed_after_s, 2),
    }


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No log lines from the clients for a while."""
    with contextlib.ExitStack() as stack:
        for name in ("aiormq", "aio_pika", "patterns.clients"):
            stack.enter_context(quieted(logging.getLogger(name)))
        yield


async def unreadable_request(transport: str, address: str | None = None) -> Any:
    """A request whose body is not JSON, sent with the bare client: the reply it gets."""
    address = address or default(transport)
    async with processes.children() as started:
        started.append(await start_replier(transport, address))
        if kind(transport) == "amqp":
            return await amqp_exchange(address, b'{"a": 1, "b": ')
        return await redis_exchange(address, b'{"a": 1, "b": ')


async def amqp_exchange(queue: str, body: bytes, timeout: float = 10) -> dict:
    """Send `body` to `queue` as a request with aio-pika alone; its reply's properties, body."""
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        request = aio_pika.Message(body, correlation_id="r1", reply_to=replies.name)
        await channel.default_exchange.publish(request, routing_key=queue)
        async with replies.iterator(no_ack=True) as arriving:
            reply = await asyncio.wait_for(anext(arriving), timeout)
        body = json.loads(reply.body)
        return {"correlation_id": reply.correlation_id, "type": reply.type, "body": body}


async def redis_exchange(stream: str, data: bytes, timeout: float = 10) -> dict:
    """Add a request whose data is `data` to `stream` with redis-py alone; its reply."""
    reply_to = f"replies:{uuid.uuid4().hex}"
    async with clients.redis() as redis:
        try:
            fields = {"id": "r1", "reply_to": reply_to, "data": data, "timeout_ms": 5_000}
            await redis.xadd(stream, fields)
            _, reply = await redis.blpop([reply_to], timeout=timeout)
            return json.loads(reply)
        finally:
            await redis.delete(reply_to)
