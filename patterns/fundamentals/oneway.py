"""One-way messages, peer-to-peer (ZeroMQ PUSH/PULL) or through a broker (a Redis list).

The same run over both: a sender process numbers and stamps probes, a receiver process
records latency, throughput and the delivery ledger and reports them live. From a terminal:

    python -m patterns.fundamentals.oneway receive --transport zmq --to tcp://127.0.0.1:5555
    python -m patterns.fundamentals.oneway send --transport zmq --to tcp://127.0.0.1:5555

Written as the clients teach it: a ZeroMQ PULL socket awaited once per message
(`await socket.recv()`), a Redis list popped once per message (`BLPOP`); the sender pushes
what is due in one `RPUSH`, or sends frame by frame. `oneway_fast` takes every message
that is ready at once instead, without an `await` per message; `--impl fast` runs it.
"""

import argparse
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import cli, clients, processes
from patterns.fundamentals import oneway_fast
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

if TYPE_CHECKING:  # the notebook's plot; a child process needs no matplotlib
    from patterns.measure.live import LivePlot

TRANSPORTS = ("zmq", "redis")
NAMES = {"zmq": "ZeroMQ, peer-to-peer", "redis": "Redis list, brokered"}
QUEUE = "bench:oneway"  # the Redis list; the book's names (docs/wire.md) are for its samples
# zmq: the receiver binds a free port and reports it; redis: the list's key
DEFAULT_ENDPOINT = {"zmq": "tcp://127.0.0.1:0", "redis": QUEUE}
BATCH = 1_000  # probes the sender hands over at once, closed loop

Send = Callable[[list[bytes]], Awaitable[None]]


# ---- ZeroMQ: peer-to-peer ---------------------------------------------------------------


async def zmq_messages(socket: zmq.asyncio.Socket) -> AsyncIterator[bytes]:
    """Every message the PULL socket receives, one `await` each."""
    while True:
        yield await socket.recv()


def zmq_sender(socket: zmq.asyncio.Socket) -> Send:
    async def send(frames: list[bytes]) -> None:
        for frame in frames:
            await socket.send(frame)  # waits at the high-water mark: the receiver is slow

    return send


# ---- Redis: through a broker ------------------------------------------------------------


async def redis_messages(client: aioredis.Redis, key: str) -> AsyncIterator[bytes]:
    """Every message pushed on the list, one `BLPOP` each (blocking at most a second at a
    time: a block longer than the client's socket timeout would look like a dead link)."""
    while True:
        if (popped := await client.blpop([key], timeout=1)) is not None:
            yield popped[1]


def redis_sender(client: aioredis.Redis, key: str) -> Send:
    async def send(frames: list[bytes]) -> None:
        if frames:
            await client.rpush(key, *frames)  # what is due, in one round trip

    return send


# ---- the two sides, whatever the transport ----------------------------------------------


async def receive(
    messages: AsyncIterator[bytes],
    producers: int,
    meter: ThroughputMeter,
    latency: LatencyRecorder,
    ledger: DeliveryLedger,
) -> dict[str, int]:
    """Record every probe until each producer's end marker; return what each says it sent."""
    sent: dict[str, int] = {}
    malformed = 0
    async for frame in messages:
        now_ns = time.perf_counter_ns()
        if not meter.count:
            meter.started_ns = now_ns  # the run starts with its first message
        meter.add()
        try:
            if (end := read_end(frame)) is not None:
                sent[end[0]] = end[1]
                if len(sent) == producers:
                    break
                continue
            producer, seq, sent_ns = read_probe(frame)
        except MalformedMessage:
            malformed += 1  # counted, never fatal
            continue
        ledger.record(producer, seq)
        latency.record(sent_ns, now_ns)
    sent["malformed"] = malformed
    return sent


async def send(
    send_batch: Send,
    producer: str,
    count: int,
    rate: float | None = None,
    size: int = 0,
    drop: frozenset[int] = frozenset(),
    duplicate: frozenset[int] = frozenset(),
) -> None:
    """Number and stamp `count` probes; as fast as possible, or open loop at `rate` per second.

    `drop` and `duplicate` inject faults (sequence numbers to skip or send twice), so the
    receiver's ledger can be checked against a known answer.
    """

    def frames(seqs: range, stamps: list[int]) -> list[bytes]:
        out = []
        for seq, sent_ns in zip(seqs, stamps, strict=True):
            if seq not in drop:
                out.append(probe(producer, seq, sent_ns, size))
            if seq in duplicate:
                out.append(out[-1])
        return out

    if rate is None:  # closed loop: the next batch goes when the last one is handed over
        for start in range(0, count, BATCH):
            seqs = range(start, min(count, start + BATCH))
            await send_batch(frames(seqs, [time.perf_counter_ns()] * len(seqs)))
    else:  # open loop: each probe is stamped with the time it was due, not when it went
        seq = 0
        async for due in paced(rate, count):
            await send_batch(frames(range(seq, seq + len(due)), due))
            seq += len(due)
    await send_batch([end_marker(producer, count)])


# ---- processes --------------------------------------------------------------------------


async def receiver_main(transport: str, endpoint: str, producers: int, impl: str) -> None:
    meter, latency, ledger = ThroughputMeter(), LatencyRecorder(), DeliveryLedger()
    async with contextlib.AsyncExitStack() as stack:
        if transport == "zmq":
            context = zmq.asyncio.Context()
            stack.callback(context.term)
            socket = context.socket(zmq.PULL)
            stack.callback(socket.close, 0)
            socket.bind(endpoint)
            endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            source = (
                zmq_messages(socket) if impl == "idiomatic" else oneway_fast.zmq_batches(socket)
            )
        else:
            client = clients.redis()
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(client.delete, endpoint)
            await client.delete(endpoint)  # nothing left over from an interrupted run
            source = (
                redis_messages(client, endpoint)
                if impl == "idiomatic"
                else oneway_fast.redis_batches(client, endpoint)
            )
        take = receive if impl == "idiomatic" else oneway_fast.receive
        processes.report("ready", endpoint=endpoint)
        async with reporting(processes.report, meter, latency):
            sent = await take(source, producers, meter, latency, ledger)  # type: ignore[arg-type]
        malformed = sent.pop("malformed")
        processes.report(
            "result",
            received=meter.count - len(sent),
            rate=round(meter.rate()),
            malformed=malformed,
            latency=vars(latency.summary()),
            ledger=vars(ledger.report(sent)),
        )


async def sender_main(transport: str, endpoint: str, options: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if transport == "zmq":
            context = zmq.asyncio.Context()
            stack.callback(context.term)
            socket = context.socket(zmq.PUSH)
            socket.linger = -1  # close() waits until every queued message is delivered
            stack.callback(socket.close)
            socket.connect(endpoint)
            send_batch = zmq_sender(socket)
        else:
            client = clients.redis()
            stack.push_async_callback(client.aclose)
            send_batch = redis_sender(client, endpoint)
        processes.report("ready")
        started = time.perf_counter()
        await send(
            send_batch,
            options.producer,
            options.count,
            options.rate,
            options.size,
            frozenset(options.drop),
            frozenset(options.duplicate),
        )
        elapsed = time.perf_counter() - started
        processes.report("result", sent=options.count, rate=round(options.count / elapsed))


async def run(
    transport: str,
    count: int,
    rate: float | None = None,
    plot: "LivePlot | None" = None,
    drop: tuple[int, ...] = (),
    duplicate: tuple[int, ...] = (),
    impl: str = "idiomatic",
    series: str | None = None,
) -> dict:
    """Start a receiver and a sender process, follow the receiver's reports until its result."""
    async with processes.children() as started:
        # the raw loop, a benchmark's yardstick, lives with the benchmark
        module = "patterns.bench.oneway" if impl == "raw" else __name__
        # a list of this run's own: two runs at once (a notebook and the tests) on one key
        # would take each other's messages
        endpoint = (
            f"{QUEUE}:{uuid.uuid4().hex[:12]}"
            if transport == "redis"
            else DEFAULT_ENDPOINT[transport]
        )
        receiver = await processes.start(
            module, "receive", "--transport", transport, "--to", endpoint, "--impl", impl,
        )  # fmt: skip
        started.append(receiver)
        options = ["--count", str(count), "--to", receiver.ready["endpoint"]]
        options += ["--rate", str(rate)] if rate else []
        options += ["--drop", ",".join(map(str, drop))] if drop else []
        options += ["--duplicate", ",".join(map(str, duplicate))] if duplicate else []
        sender = await processes.start(__name__, "send", "--transport", transport, *options)
        started.append(sender)
        received = (
            receiver.next_report("result")
            if plot is None
            else plot.follow(series or NAMES[transport], receiver.reports())
        )
        result, sent = await processes.together(received, sender.next_report("result"))
    return result | {"send_rate": sent["rate"]}


def seq_list(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def main() -> None:
    parser = cli.Parser(
        prog="python -m patterns.fundamentals.oneway", description=__doc__.splitlines()[0]
    )
    roles = parser.roles()
    receiver = roles.add_parser("receive", help="bind (zmq) or pop (redis), measure, report")
    sender = roles.add_parser("send", help="number, stamp and send probes")
    for role in (receiver, sender):
        role.add_argument("--transport", choices=TRANSPORTS, default="zmq")
        role.add_argument("--to", help="zmq: endpoint to bind/connect; redis: list key")
    receiver.add_argument("--producers", type=int, default=1, help="how many senders")
    receiver.add_argument("--impl", choices=("idiomatic", "fast"), default="idiomatic")
    sender.add_argument("--producer", default="p0", help="this sender's name")
    sender.add_argument("--count", type=int, default=100_000)
    sender.add_argument("--rate", type=float, help="open loop at this many per second")
    sender.add_argument("--size", type=int, default=64, help="bytes per message")
    sender.add_argument("--drop", type=seq_list, default=[], help="seqs to skip, e.g. 1,5")
    sender.add_argument("--duplicate", type=seq_list, default=[], help="seqs to send twice")
    options = parser.parse_args()
    endpoint = options.to or DEFAULT_ENDPOINT[options.transport]
    if options.role == "receive":
        main_coro = receiver_main(options.transport, endpoint, options.producers, options.impl)
    else:
        main_coro = sender_main(options.transport, endpoint, options)
    cli.run(main_coro, options.role)


if __name__ == "__main__":
    main()
