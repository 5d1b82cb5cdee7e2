"""Many requests per transport, against the real brokers: nothing is left behind.

Not in the requester (the correlation map, futures, timers), not in the broker (requests
queue or stream, pending entries, reply lists). Some requests time out on purpose, so the
late replies that follow them must be dropped without leaving anything either.
"""

import asyncio
import gc

import pytest

from patterns import clients, config
from patterns.reqrep import TRANSPORTS, RequestTimeout, connect, redis_streams
from tests.reqrep_support import serving

REQUESTS = config.scaled(100_000, 2_000)
IN_FLIGHT = 200
SLOW_EVERY = 1_000  # one request in this many is answered after SLOW_MS, with a 50 ms timeout
# a wide margin: when the loop stalls past both the deadline and the reply, the reply is
# read before the timer runs, and the request counts as answered
SLOW_MS = 1_000


def live(kind: str) -> int:
    return sum(type(o).__name__ == kind for o in gc.get_objects())


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_many_requests_leave_nothing_behind(transport: str) -> None:
    options = ("--prefetch", str(IN_FLIGHT)) if transport not in ("pipe", "zmq") else ()
    async with serving(transport, *options) as (address, _):
        async with connect(transport, address, timeout=10) as connected:
            assert await connected.request({"a": 0, "b": 0}) == {"sum": 0}
            futures_before, handles_before = live("Future"), live("TimerHandle")
            numbers = iter(range(REQUESTS))
            timed_out = 0

            async def keep_asking() -> None:
                nonlocal timed_out
                for n in numbers:
                    if n % SLOW_EVERY:
                        assert await connected.request({"a": n, "b": 1}) == {"sum": n + 1}
                        continue
                    try:
                        await connected.request({"a": n, "b": 1, "delay": SLOW_MS}, timeout=0.05)
                    except RequestTimeout:
                        timed_out += 1

            await asyncio.gather(*(keep_asking() for _ in range(IN_FLIGHT)))
            await asyncio.sleep(SLOW_MS / 1000 + 0.3)  # the late replies to the slow ones come now
            stats = connected.stats()
            if transport in ("pipe", "zmq"):
                assert stats["late"] == timed_out
            else:  # a broker drops a request that expired before a replier took it
                assert 0 < stats["late"] <= timed_out
            assert stats["answered"] == REQUESTS + 1 - timed_out
            assert timed_out == REQUESTS // SLOW_EVERY
            assert stats["pending"] == 0 and len(connected) == 0  # the correlation map
            assert stats["unknown"] == stats["malformed"] == stats["failed"] == 0
            # a leak would leave one of each per request; cancelled timers wait in the loop's
            # heap until it purges them, so a few hundred may remain
            gc.collect()
            assert live("Future") < futures_before + 100
            assert live("TimerHandle") < handles_before + 500
            assert len(asyncio.get_running_loop()._scheduled) < 1_000
            await broker_holds_nothing(transport, address, connected)
        if transport == "redis":
            async with clients.redis() as redis:
                assert not await redis.exists(connected.reply_to)  # deleted on close


async def broker_holds_nothing(transport: str, address: str | None, connected) -> None:
    if transport.startswith("amqp"):
        # declared again: a robust channel hands back its cached queue for a passive declare,
        # with the count it had then
        requests = await connected.channel.declare_queue(address, passive=True)
        assert (await requests.declare()).message_count == 0
        if transport == "amqp":  # an exclusive queue is visible only to its own connection
            replies = await connected.channel.declare_queue(connected.reply_to, passive=True)
            assert (await replies.declare()).message_count == 0
    elif transport == "redis":
        async with clients.redis() as redis:
            assert await redis.xlen(address) == 0  # answered requests are deleted
            group = await redis.xpending(address, redis_streams.GROUP)
            assert group["pending"] == 0
            assert await redis.llen(connected.reply_to) == 0
