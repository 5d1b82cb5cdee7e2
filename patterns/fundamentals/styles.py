"""Two ways to talk: one-way (fire and forget) and request/reply, over ZeroMQ.

ZeroMQ names its socket types after the pattern they implement: PUSH/PULL is one-way
(the sender never hears back), REQ/REP is request/reply, enforced in lockstep: a REQ
socket must receive the reply before it may send the next request.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq
import zmq.asyncio


@contextlib.asynccontextmanager
async def pair(kinds: tuple[int, int]) -> AsyncIterator[tuple[zmq.asyncio.Socket, ...]]:
    """Two connected sockets on a free loopback port, both closed afterwards."""
    context = zmq.asyncio.Context.instance()
    with context.socket(kinds[0]) as bound, context.socket(kinds[1]) as connected:
        port = bound.bind_to_random_port("tcp://127.0.0.1")
        connected.connect(f"tcp://127.0.0.1:{port}")
        yield bound, connected


async def one_way(texts: list[str]) -> list[str]:
    """PUSH sends every text without waiting for anything; PULL receives them."""
    async with pair((zmq.PULL, zmq.PUSH)) as (pull, push):
        for text in texts:
            await push.send_string(text)
        return [await pull.recv_string() for _ in texts]


async def request_reply(requests: list[Any], handle: Callable[[Any], Any]) -> list[Any]:
    """REQ sends a request and waits for its reply; REP answers each with `handle`."""
    async with pair((zmq.REP, zmq.REQ)) as (rep, req):
        replies = []
        for request in requests:
            await req.send_json(request)
            await rep.send_json(handle(await rep.recv_json()))
            replies.append(await req.recv_json())
        return replies


async def send_twice_without_reply() -> str:
    """What REQ says when asked to send a second request before the first reply came."""
    async with pair((zmq.REP, zmq.REQ)) as (_, req):
        await req.send_json({"n": 1})
        try:
            await req.send_json({"n": 2})
        except zmq.ZMQError as error:
            return f"zmq.ZMQError: {error}"
    return "sent"
