"""Request/reply per transport: the idiomatic requester, the tuned one, and the raw client.

For each transport (pipe, zmq, amqp, amqp-direct, redis), in one run:

* **latency**: round-trip p50/p99 at a fixed offered rate, open loop (each request timed
  from when it was scheduled), one request at a time, of three sides: the idiomatic
  requester, the tuned one (`*_fast.py`, where one exists) and the raw client (the bare
  client library sending the same request and reading the same reply, with no
  correlation map, futures or timeouts). Rounds rotate which side goes first, so that
  other load on the machine hits all alike; the figures are medians over the rounds.
  `ratio` = raw p50 / the better of idiomatic and tuned p50 (`ratio_of` says which),
  target >= 0.8; `idiomatic_ratio` = raw p50 / idiomatic p50;
* **throughput**: requests/s with 200 in flight (closed loop), in the same rotating
  rounds, the raw client keeping as many in flight; `fast_speedup` = tuned / idiomatic
  (medians), which a tuned variant must keep >= 1.5.

The idiomatic requester and the raw client talk to the idiomatic replier; the tuned
requester to the tuned replier: each side is the whole pattern as a reader would deploy it.
"""

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aio_pika
import zmq
import zmq.asyncio

from patterns import clients, processes
from patterns.measure import LatencyRecorder
from patterns.reqrep import FAST, TRANSPORTS, amqp, connect, load, pipe, wire
from patterns.reqrep.correlation import Requester
from patterns.reqrep.pacing import timer_paced

RATE = 200  # requests/s offered in the latency rounds
IN_FLIGHT = 200  # requests kept outstanding in the throughput rounds, as in notebook 09
TARGET_RATIO = 0.8
FAST_TARGET = 1.5
REQUEST = {"a": 1, "b": 2}


class RawClient(Protocol):
    """The bare client library: send a request, receive whatever replies have come."""

    async def send(self) -> None: ...

    async def receive(self) -> int: ...  # how many replies came (at least one)


# ---- raw clients: the same request and reply, with nothing of ours ----------------------


class RawPipe:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.stdin, self.stdout = process.stdin, process.stdout
        self.line = wire.request("raw", REQUEST) + b"\n"

    async def send(self) -> None:
        self.stdin.write(self.line)
        await self.stdin.drain()

    async def receive(self) -> int:
        json.loads(await self.stdout.readline())
        return 1


@contextlib.asynccontextmanager
async def raw_pipe(_: str | None) -> AsyncIterator[RawPipe]:
    process = await asyncio.create_subprocess_exec(
        *pipe.REPLIER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield RawPipe(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await process.wait()


class RawZmq:
    def __init__(self, dealer: zmq.asyncio.Socket) -> None:
        self.dealer = dealer
        self.frame = wire.request("raw", REQUEST)

    async def send(self) -> None:
        await self.dealer.send(self.frame)

    async def receive(self) -> int:
        json.loads(await self.dealer.recv())
        return 1


@contextlib.asynccontextmanager
async def raw_zmq(endpoint: str | None) -> AsyncIterator[RawZmq]:
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        yield RawZmq(dealer)
    finally:
        dealer.close(linger=0)
        context.term()


class RawAmqp:
    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: str, reply_to: str) -> None:
        self.channel, self.queue, self.reply_to = channel, queue, reply_to
        self.body = json.dumps(REQUEST).encode()
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.replies.put_nowait(message.body)

    async def send(self) -> None:
        message = aio_pika.Message(self.body, correlation_id="raw", reply_to=self.reply_to)
        await self.channel.default_exchange.publish(message, routing_key=self.queue)

    async def receive(self) -> int:
        json.loads(await self.replies.get())
        return 1


def raw_amqp(direct: bool) -> Callable[[str | None], contextlib.AbstractAsyncContextManager]:
    @contextlib.asynccontextmanager
    async def client(queue: str | None) -> AsyncIterator[RawAmqp]:
        assert queue is not None
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            if direct:
                replies = await channel.get_queue(amqp.DIRECT_REPLY_TO, ensure=False)
            else:
                replies = await channel.declare_queue(exclusive=True)
            raw = RawAmqp(channel, queue, replies.name)
            await replies.consume(raw.on_reply, no_ack=True)
            yield raw

    return client


class RawRedis:
    def __init__(self, redis: Any, stream: str, reply_to: str) -> None:
        self.redis, self.stream, self.reply_to = redis, stream, reply_to
        self.fields = {"id": "raw", "reply_to": reply_to, "data": json.dumps(REQUEST)}

    async def send(self) -> None:
        await self.redis.xadd(self.stream, self.fields)

    async def receive(self) -> int:
        popped = None
        while not popped:
            popped = await self.redis.blmpop(1, 1, self.reply_to, direction="LEFT", count=1_000)
        for reply in popped[1]:
            json.loads(reply)
        return len(popped[1])


@contextlib.asynccontextmanager
async def raw_redis(stream: str | None) -> AsyncIterator[RawRedis]:
    assert stream is not None
    reply_to = f"replies:bench-raw-{uuid.uuid4().hex}"
    async with clients.redis(max_connections=IN_FLIGHT + 2, socket_timeout=None) as redis:
        try:
            yield RawRedis(redis, stream, reply_to)
        finally:
            await redis.delete(reply_to)


RAW: dict[str, Callable[[str | None], contextlib.AbstractAsyncContextManager]] = {
    "pipe": raw_pipe,
    "zmq": raw_zmq,
    "amqp": raw_amqp(direct=False),
    "amqp-direct": raw_amqp(direct=True),
    "redis": raw_redis,
}


# ---- the measurements -------------------------------------------------------------------

Exchange = Callable[[], Awaitable[Any]]  # one request, its reply


def ours(requester: Requester) -> Exchange:
    return lambda: requester.request(REQUEST)


def raw_exchange(raw: RawClient) -> Exchange:
    async def exchange() -> None:
        await raw.send()
        await raw.receive()

    return exchange


async def ping_pong(exchange: Exchange, count: int) -> tuple[float, float]:
    """p50, p99 in ms of `count` exchanges offered at RATE/s, one at a time, from schedule."""
    latency = LatencyRecorder(capacity=count)
    async for due in timer_paced(RATE, count):
        for scheduled_ns in due:
            await exchange()
            latency.record(scheduled_ns)
    summary = latency.summary()
    return summary.p50_ns / 1e6, summary.p99_ns / 1e6


async def closed_loop(exchange: Exchange, in_flight: int, seconds: float) -> float:
    """Requests/s with `in_flight` of them always outstanding."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def keep_asking() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await exchange()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(keep_asking() for _ in range(in_flight)))
    return done / (time.perf_counter() - started)


async def raw_closed_loop(raw: RawClient, in_flight: int, seconds: float) -> float:
    """Replies/s of the raw client keeping `in_flight` requests outstanding: one more sent
    for each reply received, none matched to anything."""
    room = asyncio.Semaphore(in_flight)
    sent = received = 0
    sending: set[asyncio.Task] = set()

    async def receive() -> None:
        nonlocal received
        while True:
            came = await raw.receive()
            received += came
            for _ in range(came):
                room.release()

    receiver = asyncio.create_task(receive())
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        await room.acquire()
        task = asyncio.create_task(raw.send())  # a send may wait (a confirm): overlap them
        sending.add(task)
        task.add_done_callback(sending.discard)
        sent += 1
    elapsed, done = time.perf_counter() - started, received
    while received < sent:  # what is still out, so that the next round starts clean
        await room.acquire()
    receiver.cancel()
    await asyncio.gather(receiver, *sending, return_exceptions=True)
    return done / elapsed


def rotated(sides: list[str], round_number: int) -> list[str]:
    """The sides in a different order each round: each goes first, last, in between."""
    shift = round_number % len(sides)
    return sides[shift:] + sides[:shift]


@contextlib.asynccontextmanager
async def three_sides(transport: str) -> AsyncIterator[dict[str, Any]]:
    """{"idiomatic": requester, "fast": requester (if any), "raw": raw client}, each with
    its replier running, warm (one request answered), and cleaned up afterwards."""
    names = [f"bench:reqrep:{uuid.uuid4().hex}" for _ in range(2)]
    try:
        async with processes.children() as started, contextlib.AsyncExitStack() as stack:
            addresses: list[str | None] = [None, None]
            for n, tuned in enumerate(("",) if transport not in FAST else ("", "--fast")):
                if transport != "pipe":
                    where = None if transport == "zmq" else names[n]
                    options = [tuned] if tuned else []
                    if transport != "zmq":
                        options += ["--prefetch", str(4 * IN_FLIGHT)]
                    started.append(await load.start_replier(transport, where, *options))
                    addresses[n] = load.address_of(transport, started[-1])
            sides: dict[str, Any] = {
                "idiomatic": await stack.enter_async_context(connect(transport, addresses[0]))
            }
            if transport in FAST:
                sides["fast"] = await stack.enter_async_context(
                    connect(transport, addresses[1], fast=True)
                )
            sides["raw"] = await stack.enter_async_context(RAW[transport](addresses[0]))
            for side, client in sides.items():
                await (raw_exchange(client) if side == "raw" else ours(client))()
            yield sides
    finally:
        if transport not in ("pipe", "zmq"):
            for name in names:
                await load.forget(transport, name)


async def throughput_compared(
    transport: str, rounds: int, seconds: float, in_flight: int = IN_FLIGHT
) -> dict[str, list[float]]:
    """Requests/s of each side per round, `in_flight` outstanding, rounds rotating the order."""
    async with three_sides(transport) as sides:
        measured: dict[str, list[float]] = {side: [] for side in sides}
        for round_number in range(rounds):
            for side in rotated(list(sides), round_number):
                if side == "raw":
                    rate = await raw_closed_loop(sides[side], in_flight, seconds)
                else:
                    rate = await closed_loop(ours(sides[side]), in_flight, seconds)
                measured[side].append(round(rate))
        return measured


async def bench_transport(transport: str, rounds: int, count: int, seconds: float) -> dict:
    async with three_sides(transport) as sides:
        exchanges = {
            side: raw_exchange(client) if side == "raw" else ours(client)
            for side, client in sides.items()
        }
        latency: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        throughput: dict[str, list[float]] = {side: [] for side in sides}
        for round_number in range(rounds):
            for side in rotated(list(sides), round_number):
                latency[side].append(await ping_pong(exchanges[side], count))
            for side in rotated(list(sides), round_number):
                if side == "raw":
                    rate = await raw_closed_loop(sides[side], IN_FLIGHT, seconds)
                else:
                    rate = await closed_loop(exchanges[side], IN_FLIGHT, seconds)
                throughput[side].append(rate)
        for side, client in sides.items():
            assert side == "raw" or client.stats()["pending"] == 0
    result: dict[str, Any] = {}
    for side in sides:
        result[side] = {
            "p50_ms": round(statistics.median(p50 for p50, _ in latency[side]), 3),
            "p99_ms": round(statistics.median(p99 for _, p99 in latency[side]), 3),
            f"rps_{IN_FLIGHT}": round(statistics.median(throughput[side])),
        }
    best = min(("idiomatic", "fast") if "fast" in sides else ("idiomatic",), key=p50_of(result))
    raw_p50 = result["raw"]["p50_ms"]
    result |= {
        "ratio": round(raw_p50 / result[best]["p50_ms"], 3),
        "ratio_of": best,
        "idiomatic_ratio": round(raw_p50 / result["idiomatic"]["p50_ms"], 3),
        "meets_target": raw_p50 / result[best]["p50_ms"] >= TARGET_RATIO,
    }
    if "fast" in sides:
        rps = f"rps_{IN_FLIGHT}"
        speedup = result["fast"][rps] / result["idiomatic"][rps]
        result |= {"fast_speedup": round(speedup, 2), "fast_pays": speedup >= FAST_TARGET}
    return result


def p50_of(result: dict) -> Callable[[str], float]:
    return lambda side: result[side]["p50_ms"]


async def run(quick: bool) -> dict:
    rounds, count, seconds = (2, 60, 0.5) if quick else (7, 600, 3.0)
    results = {}
    for transport in TRANSPORTS:
        results[transport] = await bench_transport(transport, rounds, count, seconds)
    return {
        "rate": RATE,
        "rounds": rounds,
        "requests_per_round": count,
        "in_flight": IN_FLIGHT,
        "target_ratio": TARGET_RATIO,
        "fast_target": FAST_TARGET,
        "transports": results,
        "meets_target": all(
            r["meets_target"] and r.get("fast_pays", True) for r in results.values()
        ),
    }
