"""Repliers on fresh addresses for the request/reply tests, cleaned up afterwards."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

from patterns import processes
from patterns.reqrep import load


def fresh_name() -> str:
    return f"test:reqrep:{uuid.uuid4().hex}"


async def start_replier(transport: str, address: str | None, *options: str) -> processes.Child:
    return await load.start_replier(transport, address, *options)


@contextlib.asynccontextmanager
async def serving(transport: str, *options: str) -> AsyncIterator[tuple[str | None, list]]:
    """(address, started children): a replier for `transport`; none for the pipe, whose
    requester starts its own. Its queue or stream is deleted afterwards."""
    address = None if transport in ("pipe", "zmq") else fresh_name()
    try:
        async with processes.children() as started:
            if transport != "pipe":
                started.append(await start_replier(transport, address, *options))
                address = load.address_of(transport, started[0])
            yield address, started
    finally:
        if transport not in ("pipe", "zmq") and address:
            await load.forget(transport, address)


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `condition()` holds (checked every 20 ms), or fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)
