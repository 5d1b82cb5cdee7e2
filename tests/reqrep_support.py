"""Repliers on fresh addresses for the request/reply tests, cleaned up afterwards."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

from patterns import config, processes
from patterns.reqrep import amqp
from patterns.reqrep.load import REPLIER


def fresh_name() -> str:
    return f"test:reqrep:{uuid.uuid4().hex}"


async def start_replier(transport: str, address: str, *options: str) -> processes.Child:
    kind, flag, _, _ = REPLIER[transport]
    return await processes.start(
        "patterns.reqrep.replier", "--transport", kind, flag, address, *options
    )


@contextlib.asynccontextmanager
async def serving(transport: str, *options: str) -> AsyncIterator[tuple[str | None, list]]:
    """(address, started children): a replier for `transport`; none for the pipe, whose
    requester starts its own. Its queue or stream is deleted afterwards."""
    address = None if transport == "pipe" else fresh_name()
    try:
        async with processes.children() as started:
            if transport == "zmq":
                replier = await start_replier(transport, "tcp://127.0.0.1:0", *options)
                started.append(replier)
                address = replier.ready["endpoint"]
            elif address is not None:
                started.append(await start_replier(transport, address, *options))
            yield address, started
    finally:
        if transport.startswith("amqp") and address:
            await amqp.delete_queue(address)
        elif transport == "redis" and address:
            client = aioredis.from_url(config.REDIS_URL)
            await client.delete(address)
            await client.aclose()


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `condition()` holds (checked every 20 ms), or fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)
