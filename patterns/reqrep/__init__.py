"""Request/reply over one-way channels: the correlation identifier and the return address.

* `correlation`: the requester's correlation map, timeouts and errors, shared by all;
* `wire`: requests and replies as the book's samples write them (JSON);
* `handler`: what a replier answers (the book's sum, after a delay), whatever the channel;
* `pipe`, `zeromq`: the correlation identifier over a child process's stdin/stdout, and
  over ZeroMQ DEALER/ROUTER;
* `amqp`, `redis_streams`: the return address over RabbitMQ (a reply queue per requester,
  or direct reply-to) and over Redis (a request stream, a reply list per requester);
* `zeromq_fast`, `redis_streams_fast`: the same patterns, tuned (notebooks 09-10, "Going
  faster"): messages read without an await each, commands batched into pipelines;
* `load`: open-loop load from a child process, reporting latency and throughput live;
* `python -m patterns.reqrep`: each role from a terminal (see `__main__`).

Every transport gives the same requester: `async with connect(transport) as r:
await r.request(data, timeout)`.
"""

import contextlib
from collections.abc import AsyncIterator

from patterns.reqrep.correlation import (
    DEFAULT_TIMEOUT_S,
    ChannelClosed,
    Overloaded,
    ReplyError,
    Requester,
    RequestFailed,
    RequestTimeout,
)

TRANSPORTS = ("pipe", "zmq", "amqp", "amqp-direct", "redis")
FAST = ("zmq", "redis")  # the transports with a tuned variant
NAMES = {
    "pipe": "pipe (stdin/stdout)",
    "zmq": "ZeroMQ DEALER/ROUTER",
    "amqp": "AMQP reply queue",
    "amqp-direct": "AMQP direct reply-to",
    "redis": "Redis stream + reply list",
}

__all__ = [
    "FAST",
    "NAMES",
    "TRANSPORTS",
    "ChannelClosed",
    "Overloaded",
    "ReplyError",
    "RequestFailed",
    "RequestTimeout",
    "Requester",
    "connect",
]


@contextlib.asynccontextmanager
async def connect(
    transport: str,
    address: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    url: str | None = None,
    patience: float | None = None,
    fast: bool = False,
) -> AsyncIterator[Requester]:
    """A requester over `transport`; `address` is where its replier listens: the ZeroMQ
    endpoint (or several, comma-separated: the requests are dealt round-robin), the AMQP
    requests queue or the Redis requests stream (the defaults if None);
    `url` is the broker's (default: AMQP_URL or REDIS_URL), and `patience` how long it
    waits for a broker that does not answer (default: `config.GIVE_UP_AFTER_S`); `fast`
    asks for the tuned variant (one of `FAST`)."""
    if fast and transport not in FAST:
        raise ValueError(f"{transport} has no tuned variant; these do: {', '.join(FAST)}")
    if transport == "pipe":
        from patterns.reqrep import pipe

        context = pipe.requester(timeout=timeout)
    elif transport == "zmq":
        from patterns.reqrep import zeromq, zeromq_fast

        module = zeromq_fast if fast else zeromq
        endpoints = (address or zeromq.DEFAULT_ENDPOINT).split(",")
        if fast and len(endpoints) > 1:
            raise ValueError("the tuned ZeroMQ requester connects to one endpoint, not several")
        context = module.requester(endpoints if len(endpoints) > 1 else endpoints[0], timeout)
    elif transport in ("amqp", "amqp-direct"):
        from patterns.reqrep import amqp

        queue = address or amqp.REQUESTS_QUEUE
        direct = transport == "amqp-direct"
        context = amqp.requester(url, queue, direct, timeout, patience)
    elif transport == "redis":
        from patterns.reqrep import redis_streams, redis_streams_fast

        module = redis_streams_fast if fast else redis_streams
        stream = address or redis_streams.REQUESTS_STREAM
        context = module.requester(url, stream, timeout, patience)
    else:
        raise ValueError(f"transport is {transport!r}, not one of {', '.join(TRANSPORTS)}")
    async with context as connected:
        yield connected
