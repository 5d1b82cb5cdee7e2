"""Pub/sub under load: a publisher process, and a process holding N subscriber connections.

    python -m patterns.pubsub.load subscribe --transport redis --topic bench:pubsub:x -n 4
    python -m patterns.pubsub.load publish --transport redis --topic bench:pubsub:x --count 10000

The publisher numbers and stamps probes (`patterns.measure.probe`) and publishes them as
fast as it can or at a fixed rate (open loop), then an end marker. The subscribing
process records, for every delivery to every one of its connections, the latency and the
delivery ledger (each connection is a producer key of its own: lost, duplicated, out of
order per subscriber), and reports stats live and a result at the end.

Why N connections in one process: this machine has two cores shared with the broker and
the publisher; sixteen subscriber processes would measure the operating system's
scheduler. One process with N connections measures the broker's fan-out and one client
process's cost to take N copies; latency is stamped per batch, when it became ours.

`--transport ws --topic <chat URL>` measures a chat server instead: the publisher and the
subscribers are WebSocket clients of it.
"""

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import zmq.asyncio

from patterns import config, processes
from patterns.fundamentals.oneway import send as send_probes
from patterns.measure import (
    DeliveryLedger,
    LatencyRecorder,
    ThroughputMeter,
    read_end,
    read_probe,
    reporting,
)
from patterns.measure.live import LivePlot
from patterns.messages import MalformedMessage
from patterns.processes import free_port
from patterns.pubsub import amqp_fanout, redis_pubsub, redis_streams, zmq_peers

TRANSPORTS = ("redis", "zmq", "amqp", "streams")
NAMES = {
    "redis": "Redis Pub/Sub",
    "zmq": "ZeroMQ PUB/SUB",
    "amqp": "AMQP fanout",
    "streams": "Redis Streams",
    "ws": "chat server (WebSocket)",
}
IDLE_S = 10.0  # a subscriber that hears nothing this long stops (its end marker was lost)

Batches = AsyncIterator[list[bytes]]
Send = Callable[[list[bytes]], Awaitable[None]]


def report_state(state: str, detail: str) -> None:
    processes.report("state", state=state, detail=detail)


# ---- our modules, used as the chat uses them --------------------------------------------


@contextlib.asynccontextmanager
async def subscription(options: argparse.Namespace, context: Any) -> AsyncIterator[Batches]:
    transport, topic = options.transport, options.topic
    if transport == "redis":
        async with redis_pubsub.Subscriber(config.REDIS_URL, topic, report_state) as sub:
            yield sub.batches()
    elif transport == "zmq":
        sub = zmq_peers.Subscriber(
            context, [options.endpoint], topic.encode(), options.hwm, report_state
        )
        try:
            yield sub.batches()
        finally:
            await sub.aclose()
    elif transport == "amqp":
        queue = f"{topic}.sub.{uuid.uuid4().hex[:8]}"  # exclusive: gone with the connection
        async with amqp_fanout.Subscriber(
            config.AMQP_URL, queue, topic, on_state=report_state
        ) as sub:
            yield sub.batches()
    elif transport == "streams":
        async with redis_streams.Subscriber(config.REDIS_URL, topic, on_state=report_state) as sub:
            yield sub.batches()
    else:
        async with aiohttp.ClientSession() as session, session.ws_connect(topic) as ws:
            yield websocket_batches(ws)


async def websocket_batches(ws: aiohttp.ClientWebSocketResponse) -> Batches:
    """One frame per await: aiohttp's client has no way to take what is ready at once."""
    async for frame in ws:
        if frame.type == aiohttp.WSMsgType.TEXT:
            yield [frame.data.encode()]


@contextlib.asynccontextmanager
async def publisher(options: argparse.Namespace, context: Any) -> AsyncIterator[Send]:
    transport, topic = options.transport, options.topic
    if transport == "redis":
        pub: Any = redis_pubsub.Publisher(config.REDIS_URL, topic)
    elif transport == "amqp":
        pub = amqp_fanout.Publisher(config.AMQP_URL, topic)
    elif transport == "streams":
        pub = redis_streams.Publisher(config.REDIS_URL, topic, options.maxlen)
    elif transport == "zmq":
        pub = zmq_peers.Publisher(context, options.endpoint, topic.encode(), options.hwm)
        try:
            if options.handshake:
                await pub.wait_for_subscribers(options.subscribers)
            yield pub.publish
        finally:
            # a publisher that outruns its subscribers still has their messages queued
            pub.close(linger_ms=10_000)
        return
    else:
        async with aiohttp.ClientSession() as session, session.ws_connect(topic) as ws:
            echo = asyncio.create_task(discard(ws))  # the chat sends us our own messages too
            yield lambda frames: websocket_send(ws, frames)
            echo.cancel()
        return
    try:
        yield pub.publish
    finally:
        await pub.aclose()


async def discard(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def websocket_send(ws: aiohttp.ClientWebSocketResponse, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send_str(frame.decode())


def implementation(options: argparse.Namespace) -> tuple[Callable, Callable]:
    if options.impl == "raw":  # the benchmark's baseline: the client libraries by hand
        from patterns.bench import pubsub as raw

        return raw.subscription, raw.publisher
    return subscription, publisher


# ---- the two processes ------------------------------------------------------------------


async def drain(
    key: int,
    batches: Batches,
    meter: ThroughputMeter,
    latency: LatencyRecorder,
    ledger: DeliveryLedger,
    work_s: float,
    span: list[int],
    idle_s: float = IDLE_S,
) -> int:
    """Record every probe this subscriber gets until the end marker; return the malformed."""
    malformed = 0
    iterator = aiter(batches)
    while True:
        try:
            # before the first message, the publisher may still be starting
            batch = await asyncio.wait_for(anext(iterator), idle_s if span[0] else IDLE_S)
        except TimeoutError:
            return malformed
        now_ns = time.perf_counter_ns()
        span[0] = span[0] or now_ns
        for frame in batch:
            try:
                if read_end(frame) is not None:
                    span[1] = now_ns
                    return malformed
                _, seq, sent_ns = read_probe(frame)
            except MalformedMessage:
                malformed += 1
                continue
            ledger.record(key, seq)
            latency.record(sent_ns, now_ns)
        meter.add(len(batch))
        span[1] = now_ns
        if work_s:  # a slow subscriber: this much work per message, blocking, like CPU work
            time.sleep(work_s * len(batch))  # noqa: ASYNC251


async def subscriber_main(options: argparse.Namespace) -> None:
    meter, latency, ledger = ThroughputMeter(), LatencyRecorder(), DeliveryLedger()
    subscribe, _ = implementation(options)
    context = zmq.asyncio.Context()
    span = [0, 0]  # first and last arrival, for the delivery rate
    try:
        async with contextlib.AsyncExitStack() as stack:
            connections = [
                await stack.enter_async_context(subscribe(options, context))
                for _ in range(options.subscribers)
            ]
            processes.report("ready", subscribers=options.subscribers)
            meter.started_ns = time.perf_counter_ns()
            work_s = options.work_ms / 1000
            async with reporting(processes.report, meter, latency):
                malformed = await asyncio.gather(
                    *(
                        drain(key, batches, meter, latency, ledger, work_s, span, options.idle)
                        for key, batches in enumerate(connections)
                    )
                )
    finally:
        context.term()
    sent = dict.fromkeys(range(options.subscribers), options.count)
    delivered = ledger.received()
    seconds = max(1, span[1] - span[0]) / 1e9
    processes.report(
        "result",
        subscribers=options.subscribers,
        received=delivered,
        rate=round(delivered / seconds),
        malformed=sum(malformed),
        latency=vars(latency.summary()),
        ledger=vars(ledger.report(sent)),
    )


async def publisher_main(options: argparse.Namespace) -> None:
    _, publish = implementation(options)
    context = zmq.asyncio.Context()
    try:
        async with publish(options, context) as send_batch:
            processes.report("ready")
            started = time.perf_counter()
            await send_probes(send_batch, "p0", options.count, options.rate, options.size)
            elapsed = time.perf_counter() - started
    finally:
        context.destroy(linger=10_000)  # what is still queued goes out (up to 10 s)
    processes.report("result", sent=options.count, rate=round(options.count / elapsed))


# ---- from a notebook --------------------------------------------------------------------


def free_endpoint() -> str:
    """A free loopback TCP port for a ZeroMQ publisher, chosen before its subscribers start."""
    return f"tcp://127.0.0.1:{free_port()}"


async def follow(
    receiver: processes.Child,
    plot: LivePlot | None,
    series: str,
    on_report: Callable[[dict], None] | None,
) -> dict:
    """The subscriber's "result"; its stats drawn on the way, every report shown to
    `on_report` (a notebook cuts a connection once enough has arrived)."""
    async for report in receiver.reports():
        if report["event"] == "result":
            return report
        if report["event"] == "stats" and plot is not None:
            plot.add(series, report)
        if on_report is not None:
            on_report(report)
    raise processes.ChildFailed(f"the subscribers exited without a result:\n{receiver.log()}")


async def run(
    transport: str,
    topic: str,
    count: int,
    subscribers: int = 1,
    rate: float | None = None,
    plot: LivePlot | None = None,
    series: str | None = None,
    env: dict[str, str] | None = None,
    on_report: Callable[[dict], None] | None = None,
    subscriber_env: dict[str, str] | None = None,
    **extra: Any,
) -> dict:
    """Start the subscribing process (N connections), then the publisher; return the
    subscribers' result, with the publisher's send rate. `env` is for both processes,
    `subscriber_env` for the subscribers only (a proxy only they go through). `extra`: more
    options of both, e.g. work_ms=1 (slow subscribers), hwm=100, handshake=False, size=1000,
    impl="raw"."""
    options = {"transport": transport, "topic": topic, "count": count} | extra
    if transport == "zmq":
        options.setdefault("endpoint", free_endpoint())
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    async with processes.children() as started:
        receiver = await processes.start(
            __name__,
            "subscribe",
            *flags,
            f"--subscribers={subscribers}",
            env=(env or {}) | (subscriber_env or {}),
        )
        started.append(receiver)
        publish_flags = [*flags, f"--subscribers={subscribers}"]
        publish_flags += [f"--rate={rate}"] if rate else []
        sender = await processes.start(__name__, "publish", *publish_flags, env=env)
        started.append(sender)
        received = follow(receiver, plot, series or NAMES[transport], on_report)
        result, sent = await processes.together(received, sender.next_report("result"))
    return result | {"send_rate": sent["rate"]}


SUBSCRIBER_COUNTS = (1, 4, 16)


async def sweep(
    transport: str,
    topic: str,
    rate: float,
    seconds: float,
    plot: LivePlot | None = None,
    counts: tuple[int, ...] = SUBSCRIBER_COUNTS,
) -> list[dict]:
    """The same open-loop load (`rate` per second for `seconds`) to 1, 4, 16 subscribers:
    one row per count (deliveries per second over all subscribers, latency, ledger)."""
    rows = []
    for n in counts:
        series = f"{n} subscriber{'s' if n > 1 else ''}"
        result = await run(transport, topic, int(rate * seconds), n, rate, plot, series)
        ledger = result["ledger"]
        rows.append(
            {"subscribers": n, "deliveries/s": result["rate"]}
            | {f"{p} ms": result["latency"][f"{p}_ns"] / 1e6 for p in ("p50", "p99", "max")}
            | {k: ledger[k] for k in ("received", "lost", "duplicated", "out_of_order")}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("publish", "subscribe"))
    parser.add_argument("--transport", choices=(*TRANSPORTS, "ws"), required=True)
    parser.add_argument("--topic", required=True, help="channel, exchange, stream or chat URL")
    parser.add_argument("--subscribers", "-n", type=int, default=1)
    parser.add_argument("--count", type=int, default=10_000, help="probes published")
    parser.add_argument("--rate", type=float, help="publish: open loop at this many per second")
    parser.add_argument("--size", type=int, default=64, help="publish: bytes per probe")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="zmq: PUB address")
    parser.add_argument("--hwm", type=int, default=zmq_peers.HWM, help="zmq: high-water mark")
    parser.add_argument(
        "--handshake",
        type=lambda text: text.lower() in ("1", "true", "yes"),
        default=True,
        help="zmq: wait until the subscribers have subscribed (false: the slow joiner)",
    )
    parser.add_argument("--maxlen", type=int, default=redis_streams.MAXLEN, help="streams")
    parser.add_argument("--work-ms", type=float, default=0.0, help="subscribe: ms per message")
    parser.add_argument(
        "--idle", type=float, default=IDLE_S, help="subscribe: stop after this many silent s"
    )
    parser.add_argument("--impl", choices=("ours", "raw"), default="ours")
    options = parser.parse_args()
    processes.run((subscriber_main if options.role == "subscribe" else publisher_main)(options))


if __name__ == "__main__":
    main()
