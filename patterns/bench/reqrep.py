"""Request/reply per transport: round trips of ours vs a raw client, and max requests/s.

For each transport (pipe, zmq, amqp, amqp-direct, redis), in one run and against the same
replier:

* round-trip p50/p99 at a fixed offered rate, open loop (each request timed from when it
  was scheduled), of our requester and of a raw-client ping-pong (the bare client library
  sending the same request and reading the same reply, with no correlation map, futures or
  timeouts), in alternating rounds so that other load on the machine hits both alike;
  `ratio` = raw p50 / ours p50 (medians over the rounds), target >= 0.8;
* the maximum sustained requests/s of ours with 1 and with 64 requests in flight (closed
  loop), and of the raw ping-pong.

Both sides ask one request at a time in the latency rounds, so the difference is the cost
of our layer alone; the offered rate is far below what any transport sustains.
"""

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import redis.asyncio as aioredis
import zmq
import zmq.asyncio
from pamqp.commands import Basic

from patterns import config, processes
from patterns.measure import LatencyRecorder
from patterns.reqrep import TRANSPORTS, Requester, amqp, connect, pipe
from patterns.reqrep.load import REPLIER, forget
from patterns.reqrep.pacing import timer_paced

RATE = 200  # requests/s offered in the latency rounds
TARGET_RATIO = 0.8
REQUEST = {"a": 1, "b": 2}

Exchange = Callable[[], Awaitable[Any]]  # one request, its reply


# ---- raw clients: the same request and reply, with nothing of ours ----------------------


@contextlib.asynccontextmanager
async def raw_pipe(_: str | None) -> AsyncIterator[Exchange]:
    process = await asyncio.create_subprocess_exec(
        *pipe.REPLIER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    line = json.dumps({"type": "request", "data": REQUEST, "id": "raw"}).encode() + b"\n"

    async def exchange() -> Any:
        stdin.write(line)
        await stdin.drain()
        return json.loads(await stdout.readline())

    try:
        yield exchange
    finally:
        stdin.close()
        await process.wait()


@contextlib.asynccontextmanager
async def raw_zmq(endpoint: str | None) -> AsyncIterator[Exchange]:
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    frame = json.dumps({"type": "request", "data": REQUEST, "id": "raw"}).encode()

    async def exchange() -> Any:
        await dealer.send(frame)
        return json.loads(await dealer.recv())

    try:
        yield exchange
    finally:
        dealer.close(linger=0)
        context.term()


def raw_amqp(direct: bool) -> Callable[[str | None], contextlib.AbstractAsyncContextManager]:
    @contextlib.asynccontextmanager
    async def client(queue: str | None) -> AsyncIterator[Exchange]:
        connection = await aiormq.connect(config.AMQP_URL)
        channel = await connection.channel(publisher_confirms=False)
        reply_to = amqp.DIRECT_REPLY_TO
        if not direct:
            reply_to = (await channel.queue_declare("", exclusive=True)).queue
        waiting: list[asyncio.Future] = []

        async def on_reply(message: aiormq.abc.DeliveredMessage) -> None:
            waiting.pop().set_result(message.body)

        await channel.basic_consume(reply_to, on_reply, no_ack=True)
        body = json.dumps(REQUEST).encode()
        properties = Basic.Properties(correlation_id="raw", reply_to=reply_to)

        async def exchange() -> Any:
            waiting.append(asyncio.get_running_loop().create_future())
            await channel.basic_publish(body, routing_key=queue, properties=properties)
            return json.loads(await waiting[-1])

        try:
            yield exchange
        finally:
            await connection.close()

    return client


@contextlib.asynccontextmanager
async def raw_redis(stream: str | None) -> AsyncIterator[Exchange]:
    client = aioredis.from_url(config.REDIS_URL)
    reader = aioredis.from_url(config.REDIS_URL, socket_timeout=10)
    reply_to = f"bench:reqrep:raw:{uuid.uuid4().hex}"
    fields = {"id": "raw", "reply_to": reply_to, "data": json.dumps(REQUEST), "timeout_ms": 5000}

    async def exchange() -> Any:
        await client.xadd(stream, fields)
        return json.loads((await reader.blpop([reply_to], timeout=5))[1])

    try:
        yield exchange
    finally:
        await client.delete(reply_to)
        await reader.aclose()
        await client.aclose()


RAW = {
    "pipe": raw_pipe,
    "zmq": raw_zmq,
    "amqp": raw_amqp(direct=False),
    "amqp-direct": raw_amqp(direct=True),
    "redis": raw_redis,
}


# ---- the measurements -------------------------------------------------------------------


async def ping_pong(exchange: Exchange, count: int) -> tuple[float, float]:
    """p50, p99 in ms of `count` exchanges offered at RATE/s, one at a time, from schedule."""
    latency = LatencyRecorder(capacity=count)
    async for due in timer_paced(RATE, count):
        for scheduled_ns in due:
            await exchange()
            latency.record(scheduled_ns)
    summary = latency.summary()
    return summary.p50_ns / 1e6, summary.p99_ns / 1e6


async def max_rate(exchange: Exchange, in_flight: int, seconds: float) -> int:
    """Requests/s with `in_flight` of them always outstanding (closed loop)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def keep_asking() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await exchange()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(keep_asking() for _ in range(in_flight)))
    return round(done / (time.perf_counter() - started))


def ours(connected: Requester) -> Exchange:
    return lambda: connected.request(REQUEST)


async def bench_transport(transport: str, rounds: int, count: int, seconds: float) -> dict:
    address = f"bench:reqrep:{uuid.uuid4().hex}"
    try:
        async with processes.children() as started:
            if transport in REPLIER:
                kind, flag, where, reported = REPLIER[transport]
                replier = await processes.start(
                    "patterns.reqrep.replier", "--transport", kind, flag, where or address
                )
                started.append(replier)
                address = replier.ready[reported]
            async with connect(transport, address) as connected, RAW[transport](address) as raw:
                for exchange in (ours(connected), raw):  # both connected and warm
                    assert await exchange() is not None
                measured: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}
                for _ in range(rounds):
                    measured["ours"].append(await ping_pong(ours(connected), count))
                    measured["raw"].append(await ping_pong(raw, count))
                result = {
                    f"{side}_{name}_ms": round(statistics.median(r[i] for r in runs), 3)
                    for side, runs in measured.items()
                    for i, name in enumerate(("p50", "p99"))
                }
                result["ratio"] = round(result["raw_p50_ms"] / result["ours_p50_ms"], 3)
                result["max_rps_1"] = await max_rate(ours(connected), 1, seconds)
                result["max_rps_64"] = await max_rate(ours(connected), 64, seconds)
                result["raw_max_rps_1"] = await max_rate(raw, 1, seconds)
                assert connected.stats()["pending"] == 0
                return result | {"meets_target": result["ratio"] >= TARGET_RATIO}
    finally:
        await forget(transport, address)


async def run(quick: bool) -> dict:
    rounds, count, seconds = (3, 100, 1.0) if quick else (7, 600, 5.0)
    results = {}
    for transport in TRANSPORTS:
        results[transport] = await bench_transport(transport, rounds, count, seconds)
    return {
        "rate": RATE,
        "rounds": rounds,
        "requests_per_round": count,
        "target_ratio": TARGET_RATIO,
        "transports": results,
        "meets_target": all(r["meets_target"] for r in results.values()),
    }
