"""Pub/sub under load: a publisher process, and a process holding N subscriber connections.

    python -m patterns.pubsub.load subscribe --transport redis --topic bench:pubsub:x -n 4
    python -m patterns.pubsub.load publish --transport redis --topic bench:pubsub:x -n 4

The publisher numbers and stamps probes (`patterns.measure.probe`) and publishes them as
fast as it can or at a fixed rate (open loop), then an end marker. The subscribing
process records, for every delivery to every one of its connections, the latency and the
delivery ledger (each connection is a producer key of its own: lost, duplicated, out of
order per subscriber), and reports stats live and a result at the end.

`--impl` picks the code under load: `idiomatic` (the `patterns.pubsub` modules, one
message per `await`, as the chat runs them), `fast` (their `*_fast.py` siblings, where
one exists) or `raw` (the client libraries by hand, `patterns.bench.pubsub_raw`).

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
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import zmq.asyncio

from patterns import cli, clients, processes
from patterns.bench import pubsub_raw
from patterns.measure import (
    DeliveryLedger,
    LatencyRecorder,
    ThroughputMeter,
    end_marker,
    paced,
    probe,
    read_end,
    read_probe,
    reporting,
)
from patterns.messages import MalformedMessage
from patterns.processes import free_port
from patterns.pubsub import (
    amqp_fanout,
    amqp_fanout_fast,
    redis_pubsub,
    redis_pubsub_fast,
    redis_streams,
    redis_streams_fast,
    zmq_peers,
    zmq_peers_fast,
)

if TYPE_CHECKING:  # matplotlib is for the notebook drawing, not for the measuring processes
    from patterns.measure.live import LivePlot

TRANSPORTS = ("redis", "zmq", "amqp", "streams")
NAMES = {
    "redis": "Redis Pub/Sub",
    "zmq": "ZeroMQ PUB/SUB",
    "amqp": "AMQP fanout",
    "streams": "Redis Streams",
    "ws": "chat server (WebSocket)",
}
IMPLS = ("idiomatic", "fast", "raw")
FAST = ("redis", "zmq", "amqp", "streams")  # the transports with a *_fast module that pays
BATCH = 1_000  # probes handed to the publisher at once in a closed loop
IDLE_S = 10.0  # a subscriber that hears nothing this long stops (its end marker was lost)

Batches = AsyncIterator[list[bytes]]
Send = Callable[[list[bytes]], Awaitable[None]]


def report_state(state: str, **fields: object) -> None:
    processes.report("state", state=state, **fields)


# ---- the idiomatic modules, used as the chat uses them ----------------------------------


async def one_by_one(messages: AsyncIterator[bytes]) -> Batches:
    """The harness takes batches; an idiomatic subscriber gives one message at a time."""
    async for message in messages:
        yield [message]


@contextlib.asynccontextmanager
async def subscription(options: argparse.Namespace, context: Any) -> AsyncIterator[Batches]:
    transport, topic = options.transport, options.topic
    if transport == "redis":
        async with (
            clients.redis() as redis,
            redis_pubsub.subscription(redis, topic, report_state) as messages,
        ):
            yield one_by_one(messages)
    elif transport == "zmq":
        endpoints = [options.endpoint]
        async with zmq_peers.subscription(
            context, endpoints, topic.encode(), options.hwm, report_state
        ) as messages:
            yield one_by_one(messages)
    elif transport == "amqp":
        queue = f"{topic}.sub.{uuid.uuid4().hex[:8]}"  # exclusive: gone with the connection
        async with (
            await clients.amqp() as connection,
            amqp_fanout.subscription(connection, queue, topic, on_event=report_state) as messages,
        ):
            yield one_by_one(messages)
    elif transport == "streams":
        async with (
            clients.redis() as redis,
            redis_streams.subscription(redis, topic, on_event=report_state) as entries,
        ):
            yield one_by_one(message async for _, message in entries)
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
    if transport in ("redis", "streams"):
        async with clients.redis() as redis:

            async def redis_send(messages: list[bytes]) -> None:
                for message in messages:
                    if transport == "redis":
                        await redis_pubsub.publish(redis, message, topic)
                    else:
                        await redis_streams.publish(redis, message, topic, options.maxlen)

            yield redis_send
    elif transport == "zmq":
        socket = zmq_peers.bind_publisher(context, options.endpoint, options.hwm)
        try:
            if options.handshake:
                await zmq_peers.wait_for_subscribers(socket, options.subscribers)

            async def zmq_send(messages: list[bytes]) -> None:
                for message in messages:
                    await zmq_peers.publish(socket, message, topic.encode())

            yield zmq_send
        finally:
            # a publisher that outruns its subscribers still has their messages queued
            socket.close(linger=10_000)
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            exchange = await amqp_fanout.declare_exchange(channel, topic)

            async def amqp_send(messages: list[bytes]) -> None:
                for message in messages:
                    await amqp_fanout.publish(exchange, message)

            yield amqp_send
    else:
        async with aiohttp.ClientSession() as session, session.ws_connect(topic) as ws:
            echo = asyncio.create_task(discard(ws))  # the chat sends us our own messages too
            try:
                yield lambda frames: websocket_send(ws, frames)
            finally:
                await ws.close()  # a close frame after the last message, not a cut connection
                await echo


async def discard(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def websocket_send(ws: aiohttp.ClientWebSocketResponse, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send_str(frame.decode())


# ---- their *_fast siblings --------------------------------------------------------------


@contextlib.asynccontextmanager
async def fast_subscription(options: argparse.Namespace, context: Any) -> AsyncIterator[Batches]:
    transport, topic = options.transport, options.topic
    if transport == "redis":
        async with redis_pubsub_fast.subscription(None, topic, report_state) as batches:
            yield batches
    elif transport == "zmq":
        endpoints = [options.endpoint]
        async with zmq_peers_fast.subscription(
            context, endpoints, topic.encode(), options.hwm, report_state
        ) as batches:
            yield batches
    elif transport == "amqp":
        queue = f"{topic}.sub.{uuid.uuid4().hex[:8]}"
        async with (
            await clients.amqp() as connection,
            amqp_fanout_fast.subscription(connection, queue, topic, on_event=report_state) as b,
        ):
            yield b
    else:
        async with (
            clients.redis() as redis,
            redis_streams_fast.subscription(redis, topic, on_event=report_state) as batches,
        ):
            yield batches


@contextlib.asynccontextmanager
async def fast_publisher(options: argparse.Namespace, context: Any) -> AsyncIterator[Send]:
    transport, topic = options.transport, options.topic
    if transport in ("redis", "streams"):
        async with clients.redis() as redis:
            if transport == "redis":
                yield lambda messages: redis_pubsub_fast.publish_many(redis, messages, topic)
            else:
                yield lambda messages: redis_streams_fast.publish_many(
                    redis, messages, topic, options.maxlen
                )
    elif transport == "zmq":
        socket = zmq_peers.bind_publisher(context, options.endpoint, options.hwm)
        try:
            if options.handshake:
                await zmq_peers.wait_for_subscribers(socket, options.subscribers)

            async def zmq_send(messages: list[bytes]) -> None:
                zmq_peers_fast.publish_many(socket, messages, topic.encode())

            yield zmq_send
        finally:
            socket.close(linger=10_000)
    else:
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await amqp_fanout.declare_exchange(channel, topic)
            yield lambda messages: amqp_fanout_fast.publish_many(channel, messages, topic)


def implementation(options: argparse.Namespace) -> tuple[Callable, Callable]:
    """(subscription, publisher) of the implementation `--impl` names."""
    if options.impl == "raw":
        return pubsub_raw.subscription, pubsub_raw.publisher
    if options.impl == "fast":
        return fast_subscription, fast_publisher
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
) -> int:
    """Record every probe this subscriber gets until the end marker; return the malformed."""
    malformed = 0
    async for batch in batches:
        now_ns = time.perf_counter_ns()  # one clock read per batch: when it became ours
        span[0] = span[0] or now_ns
        span[1] = now_ns
        for frame in batch:
            try:
                if read_end(frame) is not None:
                    return malformed
                _, seq, sent_ns = read_probe(frame)
            except MalformedMessage:
                malformed += 1
                continue
            ledger.record(key, seq)
            latency.record(sent_ns, now_ns)
        meter.add(len(batch))
        if work_s:  # a slow subscriber: this much work per message, blocking, like CPU work
            time.sleep(work_s * len(batch))  # noqa: ASYNC251
    return malformed


async def quiet_for(span: list[int], idle_s: float) -> None:
    """Return once nothing has arrived for `idle_s` (IDLE_S before the first message: the
    publisher may still be starting): an end marker was lost."""
    waited_from = time.perf_counter_ns()
    while True:
        await asyncio.sleep(0.1)
        quiet_s = (time.perf_counter_ns() - (span[1] or waited_from)) / 1e9
        if quiet_s > (idle_s if span[1] else IDLE_S):
            return


async def subscriber_main(options: argparse.Namespace) -> None:
    meter, latency, ledger = ThroughputMeter(), LatencyRecorder(), DeliveryLedger()
    subscribe, _ = implementation(options)
    context = zmq.asyncio.Context()
    span = [0, 0]  # first and last arrival, for the delivery rate
    malformed: list[int] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            connections = [
                await stack.enter_async_context(subscribe(options, context))
                for _ in range(options.subscribers)
            ]
            processes.report("ready", subscribers=options.subscribers)
            meter.started_ns = time.perf_counter_ns()
            work_s = options.work_ms / 1000
            drains = asyncio.gather(
                *(
                    drain(key, batches, meter, latency, ledger, work_s, span)
                    for key, batches in enumerate(connections)
                )
            )
            watchdog = asyncio.ensure_future(quiet_for(span, options.idle))
            async with reporting(processes.report, meter, latency):
                await asyncio.wait((drains, watchdog), return_when=asyncio.FIRST_COMPLETED)
            watchdog.cancel()
            if drains.done():
                malformed = drains.result()
            else:  # quiet for too long: stop the drains where they are
                drains.cancel()
            await asyncio.gather(drains, watchdog, return_exceptions=True)
    finally:
        context.destroy(linger=0)
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


async def send_probes(send: Send, count: int, rate: float | None, size: int) -> None:
    """`count` numbered probes, stamped with when each was due: as fast as `send` takes
    them, or open loop at `rate` per second (a stall shows in the latency); an end marker."""
    seq = 0
    while seq < count:
        if rate is None:
            due = [time.perf_counter_ns()] * min(BATCH, count - seq)
            await send([probe("p0", seq + i, sent_ns, size) for i, sent_ns in enumerate(due)])
            seq += len(due)
        else:
            async for due in paced(rate, count):
                await send([probe("p0", seq + i, sent_ns, size) for i, sent_ns in enumerate(due)])
                seq += len(due)
    await send([end_marker("p0", count)])


async def publisher_main(options: argparse.Namespace) -> None:
    _, publish = implementation(options)
    context = zmq.asyncio.Context()
    try:
        async with publish(options, context) as send_batch:
            processes.report("ready")
            started = time.perf_counter()
            await send_probes(send_batch, options.count, options.rate, options.size)
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
    plot: "LivePlot | None",
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
    plot: "LivePlot | None" = None,
    series: str | None = None,
    env: dict[str, str] | None = None,
    on_report: Callable[[dict], None] | None = None,
    subscriber_env: dict[str, str] | None = None,
    **extra: Any,
) -> dict:
    """Start the subscribing process (N connections), then the publisher; return the
    subscribers' result, with the publisher's send rate. `env` is for both processes,
    `subscriber_env` for the subscribers only (a proxy only they go through). `extra`: more
    options, e.g. work_ms=1 (slow subscribers), hwm=100, handshake=False, size=1000,
    impl="raw"; each process is given those of its role."""
    options = {"transport": transport, "topic": topic, "count": count} | extra
    options |= {"subscribers": subscribers} | ({"rate": rate} if rate else {})
    if transport == "zmq":
        options.setdefault("endpoint", free_endpoint())

    def flags(role: str) -> list[str]:
        """The options of `role`: those of both, and its own."""
        other = ROLE_OPTIONS["publish" if role == "subscribe" else "subscribe"]
        return [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if k not in other]

    async with processes.children() as started:
        subscribers_env = (env or {}) | (subscriber_env or {})
        receiver = await processes.start(
            __name__, "subscribe", *flags("subscribe"), env=subscribers_env
        )
        started.append(receiver)
        sender = await processes.start(__name__, "publish", *flags("publish"), env=env)
        started.append(sender)
        received = follow(receiver, plot, series or NAMES[transport], on_report)
        result, sent = await processes.together(received, sender.next_report("result"))
    return result | {"send_rate": sent["rate"]}


SUBSCRIBER_COUNTS = (1, 2, 4, 8, 16)


async def sweep(
    transport: str,
    topic: str,
    rate: float,
    seconds: float,
    plot: "LivePlot | None" = None,
    counts: tuple[int, ...] = SUBSCRIBER_COUNTS,
    **extra: Any,
) -> list[dict]:
    """The same open-loop load (`rate` per second for `seconds`) to 1, 2, 4, 8, 16 subscribers:
    one row per count (deliveries per second over all subscribers, latency, ledger).
    `extra`: more options of `run`."""
    rows = []
    for n in counts:
        series = f"{n} subscriber{'s' if n > 1 else ''}"
        result = await run(transport, topic, int(rate * seconds), n, rate, plot, series, **extra)
        ledger = result["ledger"]
        rows.append(
            {"subscribers": n, "deliveries/s": result["rate"]}
            | {f"{p} ms": result["latency"][f"{p}_ns"] / 1e6 for p in ("p50", "p99", "max")}
            | {k: ledger[k] for k in ("received", "lost", "duplicated", "out_of_order")}
        )
    return rows


ROLE_OPTIONS = {
    "subscribe": ("work_ms", "idle"),
    "publish": ("rate", "size", "maxlen", "handshake"),
}


def parser() -> cli.Parser:
    top = cli.Parser(prog="python -m patterns.pubsub.load", description=__doc__.split("\n")[0])
    roles = top.roles()
    subscribe = roles.add_parser("subscribe", help="N subscriber connections, measured")
    publish = roles.add_parser("publish", help="numbered, timestamped probes")
    for role in (subscribe, publish):
        role.add_argument("--transport", choices=(*TRANSPORTS, "ws"), required=True)
        role.add_argument("--topic", required=True, help="channel, exchange, stream or chat URL")
        role.add_argument("--impl", choices=IMPLS, default="idiomatic")
        role.add_argument("--subscribers", "-n", type=count, default=1)
        role.add_argument("--count", type=count, default=10_000, help="probes published")
        role.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="zmq: PUB address")
        role.add_argument("--hwm", type=int, default=zmq_peers.HWM, help="zmq: high-water mark")
        cli.add_give_up(role)
    publish.add_argument("--rate", type=float, help="open loop at this many per second")
    publish.add_argument("--size", type=int, default=64, help="bytes per probe")
    publish.add_argument("--maxlen", type=count, default=redis_streams.MAXLEN, help="streams")
    publish.add_argument(
        "--handshake",
        type=lambda text: text.lower() in ("1", "true", "yes"),
        default=True,
        help="zmq: wait until the subscribers have subscribed (false: the slow joiner)",
    )
    subscribe.add_argument("--work-ms", type=float, default=0.0, help="ms of work per message")
    subscribe.add_argument("--idle", type=float, default=IDLE_S, help="stop after s of silence")
    return top


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


async def side_by_side(
    transport: str, topic: str, count: int, rounds: int, subscribers: int = 4
) -> list[dict]:
    """Closed-loop fan-out of the idiomatic, the fast (where one exists) and the raw
    implementation, in `rounds` rounds whose order rotates, so the machine's drift hits
    all three alike: one row per implementation, with the median deliveries per second
    (over `subscribers`) and messages published per second. Each run must deliver every
    message once, in order."""
    impls = [impl for impl in IMPLS if impl != "fast" or transport in FAST]
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for round_number in range(rounds):
        shift = round_number % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            result = await run(
                transport, topic, count, subscribers, impl=impl, hwm=count + 1, maxlen=count
            )
            ledger = result["ledger"]
            assert ledger["lost"] == ledger["duplicated"] == ledger["out_of_order"] == 0, ledger
            runs[impl].append(result)
    return [
        {
            "implementation": impl,
            "deliveries/s": statistics.median(r["rate"] for r in results),
            "published/s": statistics.median(r["send_rate"] for r in results),
            "rounds": len(results),
        }
        for impl, results in runs.items()
    ]


def main() -> None:
    top = parser()
    options = top.parse_args()
    if options.impl == "fast" and options.transport not in FAST:
        top.error(f"--impl fast: no fast variant for {options.transport} (it did not pay)")
    role = subscriber_main if options.role == "subscribe" else publisher_main
    cli.run(role(options), options.role, options.give_up_after)


if __name__ == "__main__":
    main()
