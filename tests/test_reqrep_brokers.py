"""The return address through the real brokers: competing repliers, redelivery, lost requesters."""

import asyncio
import json
import time

import aio_pika
import pytest

from patterns import clients, config, processes
from patterns.faults import Proxy
from patterns.reqrep import (
    ChannelClosed,
    RequestTimeout,
    amqp,
    connect,
    load,
    redis_streams,
    scenarios,
)
from tests.reqrep_support import eventually, fresh_name, serving, start_replier

# ---- AMQP -------------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [False, True], ids=["reply-queue", "direct-reply-to"])
async def test_amqp_replier_answers_a_body_that_is_not_json_with_an_error(direct: bool) -> None:
    async with serving("amqp") as (queue, _), await clients.amqp() as connection:
        channel = await connection.channel()
        if direct:
            replies = await channel.get_queue(amqp.DIRECT_REPLY_TO, ensure=False)
        else:
            replies = await channel.declare_queue(exclusive=True)
        async with replies.iterator(no_ack=True) as arriving:
            for body, correlation_id in [(b"{not json", "bad-1"), (b'{"a": 1, "b": 2}', "ok-2")]:
                request = aio_pika.Message(
                    body, correlation_id=correlation_id, reply_to=replies.name
                )
                await channel.default_exchange.publish(request, routing_key=queue)
            bad, good = [await asyncio.wait_for(anext(arriving), 10) for _ in range(2)]
        assert (bad.correlation_id, bad.type) == ("bad-1", "error")
        assert json.loads(bad.body)["error"].startswith("not JSON")
        assert good.correlation_id == "ok-2"
        assert json.loads(good.body) == {"sum": 3}


async def test_amqp_replies_to_a_requester_that_is_gone_come_back_to_the_replier() -> None:
    async with serving("amqp") as (queue, started):
        async with connect("amqp", queue) as asker:
            pending = [
                asyncio.create_task(asker.request({"a": 1, "b": 2, "delay": 300})) for _ in range(5)
            ]
            await eventually(lambda: asker.counts.sent == 5)
        await asyncio.gather(*pending, return_exceptions=True)
        await started[0].stop()  # it finishes the requests in hand before it exits
        assert (await started[0].next_report("result"))["undeliverable"] == 5


async def test_amqp_a_lost_connection_fails_every_pending_request_at_once_then_comes_back() -> None:
    async with (
        serving("amqp") as (queue, _),
        Proxy(config.AMQP_URL) as proxy,
        amqp.requester(proxy.url, queue, timeout=30) as asker,
    ):
        pending = [
            asyncio.create_task(asker.request({"a": 1, "b": 2, "delay": 10_000})) for _ in range(20)
        ]
        await eventually(lambda: asker.counts.sent == 20)
        begun = time.perf_counter()
        await proxy.cut()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert time.perf_counter() - begun < 5
        assert all(isinstance(r, ChannelClosed) for r in results)
        assert "the connection to RabbitMQ was lost" in results[0].reason
        await proxy.resume()  # the robust connection comes back, its reply queue with it
        await asker.channel.ready()
        assert await asker.request({"a": 2, "b": 2}) == {"sum": 4}


async def test_amqp_requests_expire_when_nobody_takes_them_in_time() -> None:
    queue = fresh_name()
    try:
        async with connect("amqp", queue, timeout=0.2) as asker:
            with pytest.raises(RequestTimeout):
                await asker.request({"a": 1, "b": 2})
            await asyncio.sleep(0.3)  # past its expiration (0.2 s, its timeout)
            declared = await asker.channel.declare_queue(queue, passive=True)
            # declared again: a robust channel hands back its cached queue for a passive declare
            assert (await declared.declare()).message_count == 0  # expired: nobody computes it
    finally:
        await amqp.delete_queue(queue)


# ---- Redis ------------------------------------------------------------------------------


@pytest.fixture
async def redis_client():
    async with clients.redis() as client:
        yield client


async def test_redis_replier_answers_data_that_is_not_json_with_an_error(redis_client) -> None:
    async with serving("redis") as (stream, _):
        reply_to = f"replies:{fresh_name()}"
        for request_id, data in [("bad-1", b"{not json"), ("ok-2", b'{"a": 1, "b": 2}')]:
            fields = {"id": request_id, "reply_to": reply_to, "data": data, "timeout_ms": 5_000}
            await redis_client.xadd(stream, fields)
        replies = [json.loads((await redis_client.blpop([reply_to], 10))[1]) for _ in range(2)]
        assert replies[0]["type"] == "error" and replies[0]["inReplyTo"] == "bad-1"
        assert replies[0]["error"].startswith("not JSON")
        assert replies[1] == {"type": "response", "data": {"sum": 3}, "inReplyTo": "ok-2"}
        assert 0 < await redis_client.pttl(reply_to) <= 5_000 or not await redis_client.exists(
            reply_to
        )
        await redis_client.delete(reply_to)


async def test_redis_requests_of_a_killed_replier_are_claimed_by_another(redis_client) -> None:
    options = ("--claim-after", "0.5")
    async with serving("redis", *options) as (stream, started):
        async with connect("redis", stream, timeout=20) as asker:
            assert await asker.request({"a": 1, "b": 1}) == {"sum": 2}
            pending = [
                asyncio.create_task(asker.request({"a": n, "b": 0, "delay": 2_000}))
                for n in range(10)
            ]
            await eventually(lambda: asker.counts.sent == 11)
            # handed out in order: once a quick one sent after them is answered, it holds them
            assert await asker.request({"a": 0, "b": 0}) == {"sum": 0}
            started[0].kill()
            started.append(await start_replier("redis", stream, *options))
            assert await asyncio.gather(*pending) == [{"sum": n} for n in range(10)]
            assert asker.counts.late == 0  # each answered once: a slow request is not re-taken
        await started[1].stop()
        assert (await started[1].next_report("result"))["redelivered"] == 10
        assert await redis_client.xlen(stream) == 0  # answered requests are deleted


async def test_redis_skips_requests_whose_requester_gave_up(redis_client) -> None:
    stream = fresh_name()
    try:
        async with connect("redis", stream, timeout=0.2) as asker:
            results = await asyncio.gather(
                *(asker.request({"a": 1, "b": 2}) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, RequestTimeout) for r in results)
            async with processes.children() as started:
                started.append(await start_replier("redis", stream))
                deadline = time.monotonic() + 10
                while await redis_client.xlen(stream):  # until it has taken all five
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await started[0].stop()
                result = await started[0].next_report("result")
            assert (result["expired"], result["answered"]) == (5, 0)
            assert not await redis_client.exists(asker.reply_to)
            assert asker.counts.late == 0
    finally:
        await redis_client.delete(stream)


async def test_redis_requester_rides_out_a_short_cut_and_fails_on_a_long_one() -> None:
    async with (
        serving("redis") as (stream, _),
        Proxy(config.REDIS_URL) as proxy,
        redis_streams.requester(proxy.url, stream, timeout=20, patience=2) as asker,
    ):
        assert await asker.request({"a": 1, "b": 1}) == {"sum": 2}
        pending = asyncio.create_task(asker.request({"a": 2, "b": 2, "delay": 300}))
        await eventually(lambda: asker.counts.sent == 2)
        await proxy.cut()
        await asyncio.sleep(0.2)  # a short outage
        await proxy.resume()
        assert await pending == {"sum": 4}  # its reply waited in the list
        pending = asyncio.create_task(asker.request({"a": 3, "b": 3, "delay": 10_000}))
        await eventually(lambda: asker.counts.sent == 3)
        await proxy.cut()
        with pytest.raises(ChannelClosed, match="lost Redis at"):
            await asyncio.wait_for(pending, 10)


async def test_redis_replier_leaves_the_group_when_it_stops_with_nothing_pending(
    redis_client,
) -> None:
    async with serving("redis") as (stream, started), connect("redis", stream) as asker:
        assert await asker.request({"a": 1, "b": 1}) == {"sum": 2}
        await started[0].stop()
        consumers = await redis_client.xinfo_consumers(stream, redis_streams.GROUP)
        assert consumers == []


# ---- the staged faults of notebook 10 ---------------------------------------------------

BROKERED = ["amqp", "amqp-direct", "redis"]


@pytest.fixture
async def address():
    """(transport -> a fresh queue or stream name), deleted afterwards."""
    made: list[tuple[str, str]] = []

    def name(transport: str) -> str:
        made.append((transport, fresh_name()))
        return made[-1][1]

    yield name
    for transport, made_name in made:
        await load.forget(transport, made_name)


@pytest.mark.parametrize("transport", BROKERED)
async def test_a_slow_replier_times_out_those_behind_it_and_computes_nothing_stale(
    transport: str, address
) -> None:
    seen = await scenarios.slow_replier(transport, address(transport))
    assert seen["results"][:2] == [{"sum": 0}, {"sum": 1}]
    assert seen["results"][2:] == ["RequestTimeout"] * 3
    assert seen["late"] == 1  # the third, answered after its deadline
    assert seen["replier"]["answered"] == 4  # three of the five, and the last, quick one
    if transport == "redis":
        assert seen["replier"]["expired"] == 2


@pytest.mark.parametrize("transport", BROKERED)
async def test_requests_held_by_a_killed_replier_are_answered_by_the_other(
    transport: str, address
) -> None:
    seen = await scenarios.replier_dies(transport, address(transport))
    assert seen["results"] == [{"sum": n} for n in range(20)]
    assert seen["survivor"]["redelivered"] >= 1
    assert seen["late"] <= 1  # at most the quick one, answered but not acknowledged


@pytest.mark.parametrize("transport", BROKERED)
async def test_replies_to_a_requester_that_restarted(transport: str, address) -> None:
    seen = await scenarios.requester_restarts(transport, address(transport))
    assert seen["old requester"] == ["ChannelClosed"] * 5
    assert seen["new requester"] == {"sum": 4}
    assert seen["returned to the replier"] == (5 if transport == "amqp" else 0)
    assert seen["waiting in the old list"] == (5 if transport == "redis" else 0)
    if transport == "redis":
        assert 0 < seen["list expires in ms"] <= 10_000


@pytest.mark.parametrize("transport", ["amqp", "redis"])
async def test_an_unreadable_request_gets_an_error_reply(transport: str, address) -> None:
    reply = await scenarios.unreadable_request(transport, address(transport))
    error = reply["body"]["error"] if transport == "amqp" else reply["error"]
    assert error.startswith("not JSON")
