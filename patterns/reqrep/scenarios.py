"""Faults of the return address, staged against the real brokers (notebook 10).

Each scenario starts its own repliers on a request queue or stream (the default one
unless told otherwise), runs requesters against them, breaks something, and returns what
every side saw, so that a notebook can print it and a test can assert it. A scenario
stops its repliers before it returns; stopped, a replier finishes the requests in hand,
then reports what it did.

Where a scenario must know that the repliers hold the requests sent so far, it sends one
quick request after them and waits for its answer: requests are handed out in order, so
by then all the earlier ones have been.
"""

import asyncio
import json
import logging
import uuid
from typing import Any

import aiormq
import redis.asyncio as aioredis
from pamqp.commands import Basic

from patterns import config, processes
from patterns.brokers import quieted
from patterns.faults import Proxy
from patterns.reqrep import RequestFailed, amqp, connect, redis_streams

DEFAULT_ADDRESS = {"amqp": amqp.REQUESTS_QUEUE, "redis": redis_streams.REQUESTS_STREAM}


def kind(transport: str) -> str:
    """The replier that serves a requester: AMQP serves both AMQP requesters."""
    return "amqp" if transport.startswith("amqp") else transport


def default(transport: str) -> str:
    return DEFAULT_ADDRESS[kind(transport)]


async def start_replier(transport: str, address: str, *options: str) -> processes.Child:
    flag = "--queue" if kind(transport) == "amqp" else "--stream"
    return await processes.start(
        "patterns.reqrep.replier", "--transport", kind(transport), flag, address, *options
    )


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
            sent = [
                asyncio.create_task(asker.request({"a": n, "b": 0, "delay": 500})) for n in range(5)
            ]
            results = await outcomes(sent)
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
    its requester drops the second reply as late. Delivery is at least once.
    """
    address = address or default(transport)
    options = ("--claim-after", "1") if transport == "redis" else ()
    async with processes.children() as started:
        started += [await start_replier(transport, address, *options) for _ in range(2)]
        async with connect(transport, address, timeout=10) as asker:
            sent = [
                asyncio.create_task(asker.request({"a": n, "b": 0, "delay": 1_000}))
                for n in range(20)
            ]
            await asker.request({"a": 0, "b": 0})  # the twenty have been handed out
            doomed = await holder(transport, address, started)
            doomed.kill()
            results = await outcomes(sent)
            late = asker.counts.late
    survivor = next(child for child in started if child is not doomed)
    report = await survivor.next_report("result")
    return {"results": results, "late": late, "survivor": report}


async def holder(transport: str, address: str, started: list[processes.Child]) -> processes.Child:
    """The replier holding the most requests (AMQP hands them out in turn: either)."""
    if kind(transport) != "redis":
        return started[0]
    client = aioredis.from_url(config.REDIS_URL)
    try:
        pending = await client.xpending_range(address, redis_streams.GROUP, "-", "+", 1_000)
    finally:
        await client.aclose()
    held = [entry["consumer"].decode() for entry in pending]
    return max(started, key=lambda child: held.count(child.ready["consumer"]))


async def requester_restarts(transport: str, address: str | None = None) -> dict:
    """A requester has five requests out (0.5 s each) when its connection drops, as if its
    process had crashed; a new requester starts. Where do the five replies go?

    The old requester's pending requests fail at once (ChannelClosed). Its replies, when
    the replier sends them: over AMQP with a reply queue, the queue went with the
    connection and the replies come back to the replier (`mandatory`), which counts them;
    over direct reply-to, RabbitMQ drops them; over Redis, they wait in the old requester's
    list until it expires.
    """
    address = address or default(transport)
    url = config.AMQP_URL if kind(transport) == "amqp" else config.REDIS_URL
    async with processes.children() as started:
        started.append(await start_replier(transport, address))
        async with (
            Proxy(url) as proxy,
            connect(transport, address, timeout=10, url=proxy.url) as first,
        ):
            sent = [
                asyncio.create_task(first.request({"a": n, "b": 0, "delay": 500})) for n in range(5)
            ]
            await first.request({"a": 0, "b": 0})  # the five are with the replier
            with quieted(logging.getLogger("aiormq")):  # it logs the lost connection itself
                await proxy.cut()
                old_saw = await outcomes(sent)
            reply_to = first.reply_to  # type: ignore[attr-defined]
        async with connect(transport, address, timeout=10) as second:
            # answered after the five replies were sent, wherever they went
            new_got = await second.request({"a": 2, "b": 2, "delay": 700})
        waiting = ttl_ms = 0
        if transport == "redis":
            client = aioredis.from_url(config.REDIS_URL)
            waiting, ttl_ms = await client.llen(reply_to), await client.pttl(reply_to)
            await client.delete(reply_to)
            await client.aclose()
    report = await started[0].next_report("result")
    return {
        "old requester": old_saw,
        "new requester": new_got,
        "returned to the replier": report["undeliverable"],
        "waiting in the old list": waiting,
        "list expires in ms": ttl_ms,
    }


async def unreadable_request(transport: str, address: str | None = None) -> Any:
    """A request whose body is not JSON, sent with the bare client: the reply it gets."""
    address = address or default(transport)
    async with processes.children() as started:
        started.append(await start_replier(transport, address))
        if kind(transport) == "amqp":
            return await amqp_exchange(address, b'{"a": 1, "b": ')
        return await redis_exchange(address, b'{"a": 1, "b": ')


async def amqp_exchange(queue: str, body: bytes) -> dict:
    connection = await aiormq.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        reply_queue = (await channel.queue_declare("", exclusive=True)).queue
        replies: asyncio.Queue = asyncio.Queue()
        await channel.basic_consume(reply_queue, replies.put, no_ack=True)
        properties = Basic.Properties(correlation_id="r1", reply_to=reply_queue)
        await channel.basic_publish(body, routing_key=queue, properties=properties)
        reply = await asyncio.wait_for(replies.get(), 10)
        answer = reply.header.properties
        return {
            "correlation_id": answer.correlation_id,
            "type": answer.message_type,
            "body": json.loads(reply.body),
        }
    finally:
        await connection.close()


async def redis_exchange(stream: str, data: bytes) -> dict:
    client = aioredis.from_url(config.REDIS_URL)
    reply_to = f"replies:{uuid.uuid4().hex}"
    try:
        fields = {"id": "r1", "reply_to": reply_to, "data": data, "timeout_ms": 5_000}
        await client.xadd(stream, fields)
        _, reply = await client.blpop([reply_to], timeout=10)
        return json.loads(reply)
    finally:
        await client.delete(reply_to)
        await client.aclose()
