"""One-way messages, peer-to-peer (ZeroMQ PUSH/PULL) or through a broker (a Redis list).

The same run over both: a sender process numbers and stamps probes, a receiver process
records latency, throughput and the delivery ledger and reports them live. From a terminal:

    python -m patterns.fundamentals.oneway receive --transport zmq --to tcp://127.0.0.1:5555
    python -m patterns.fundamentals.oneway send --transport zmq --to tcp://127.0.0.1:5555

Each side awaits readiness once and then moves everything that is ready without awaiting
again (a ZeroMQ socket drained with NOBLOCK, a Redis list popped 1,000 at a time, sends
batched into one RPUSH), because one `await` per message costs ten times the message.
"""

import argparse
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import config, processes
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
from patterns.measure.live import LivePlot
from patterns.messages import MalformedMessage

TRANSPORTS = ("zmq", "redis")
NAMES = {"zmq": "ZeroMQ, peer-to-peer", "redis": "Redis list, brokered"}
QUEUE = "bench:oneway"  # the Redis list; WIRE.md's names are for the book's samples
# zmq: the receiver binds a free port and reports it; redis: the list's key
DEFAULT_ENDPOINT = {"zmq": "tcp://127.0.0.1:0", "redis": QUEUE}
BATCH = 1_000

Send = Callable[[list[bytes]], Awaitable[None]]


# ---- ZeroMQ: peer-to-peer ---------------------------------------------------------------


async def zmq_batches(socket: zmq.asyncio.Socket) -> AsyncIterator[list[bytes]]:
    """Wait until a message is ready, then take every ready one (up to BATCH) without waiting."""
    nonblocking = zmq.Socket.shadow(socket.underlying)
    while True:
        await socket.poll(flags=zmq.POLLIN)
        batch = []
        with contextlib.suppress(zmq.Again):
            while len(batch) < BATCH:
                batch.append(nonblocking.recv(zmq.NOBLOCK))
        yield batch


def zmq_sender(socket: zmq.asyncio.Socket) -> Send:
    nonblocking = zmq.Socket.shadow(socket.underlying)

    async def send(frames: list[bytes]) -> None:
        for frame in frames:
            while True:
                try:
                    nonblocking.send(frame, zmq.NOBLOCK)
                    break
                except zmq.Again:  # the high-water mark: wait until the peer takes more
                    await socket.poll(flags=zmq.POLLOUT)

    return send


# ---- Redis: through a broker ------------------------------------------------------------


async def redis_batches(client: aioredis.Redis, key: str) -> AsyncIterator[list[bytes]]:
    """BLPOP waits for the first message; LPOP with a count takes what else is queued.

    BLPOP blocks for at most a second at a time: a block longer than the client's socket
    timeout would look like a dead connection.
    """
    while True:
        if (popped := await client.blpop([key], timeout=1)) is None:
            continue
        rest = await client.lpop(key, BATCH - 1) or []
        yield [popped[1], *rest]


def redis_sender(client: aioredis.Redis, key: str) -> Send:
    async def send(frames: list[bytes]) -> None:
        if frames:
            await client.rpush(key, *frames)  # one round trip for the whole batch

    return send


# ---- the two sides, whatever the transport ----------------------------------------------


async def receive(
    batches: AsyncIterator[list[bytes]],
    producers: int,
    meter: ThroughputMeter,
    latency: LatencyRecorder,
    ledger: DeliveryLedger,
) -> dict[str, int]:
    """Record every probe until each producer's end marker; return what each says it sent."""
    sent: dict[str, int] = {}
    malformed = 0
    async for batch in batches:
        now_ns = time.perf_counter_ns()  # one clock read for the batch: when it became ours
        if not meter.count:
            meter.started_ns = now_ns  # the run starts with its first message
        for frame in batch:
            try:
                if (end := read_end(frame)) is not None:
                    sent[end[0]] = end[1]
                    continue
                producer, seq, sent_ns = read_probe(frame)
            except MalformedMessage:
                malformed += 1  # counted, never fatal
                continue
            ledger.record(producer, seq)
            latency.record(sent_ns, now_ns)
        meter.add(len(batch))
        if len(sent) == producers:
            break
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


async def receiver_main(transport: str, endpoint: str, producers: int) -> None:
    meter, latency, ledger = ThroughputMeter(), LatencyRecorder(), DeliveryLedger()
    async with contextlib.AsyncExitStack() as stack:
        if transport == "zmq":
            context = zmq.asyncio.Context()
            stack.callback(context.term)
            socket = context.socket(zmq.PULL)
            stack.callback(socket.close, 0)
            socket.bind(endpoint)
            endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            batches = zmq_batches(socket)
        else:
            client = aioredis.from_url(config.REDIS_URL)
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(client.delete, endpoint)
            await client.delete(endpoint)  # nothing left over from an interrupted run
            batches = redis_batches(client, endpoint)
        processes.report("ready", endpoint=endpoint)
        async with reporting(processes.report, meter, latency):
            sent = await receive(batches, producers, meter, latency, ledger)
        malformed = sent.pop("malformed")
        summary = latency.summary()
        processes.report(
            "result",
            received=meter.count - len(sent),
            rate=round(meter.rate()),
            malformed=malformed,
            latency=vars(summary),
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
            client = aioredis.from_url(config.REDIS_URL)
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
    plot: LivePlot | None = None,
    drop: tuple[int, ...] = (),
    duplicate: tuple[int, ...] = (),
) -> dict:
    """Start a receiver and a sender process, follow the receiver's reports until its result."""
    async with processes.children() as started:
        receiver = await processes.start(
            __name__, "receive", "--transport", transport, "--to", DEFAULT_ENDPOINT[transport]
        )
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
            else plot.follow(NAMES[transport], receiver.reports())
        )
        result, sent = await processes.together(received, sender.next_report("result"))
    return result | {"send_rate": sent["rate"]}


def seq_list(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--transport", choices=TRANSPORTS, default="zmq")
    parser.add_argument("--to", help="zmq: endpoint to bind/connect; redis: list key")
    parser.add_argument("--producers", type=int, default=1, help="receive: how many senders")
    parser.add_argument("--producer", default="p0", help="send: this sender's name")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, help="send: open loop at this many per second")
    parser.add_argument("--size", type=int, default=64, help="send: bytes per message")
    parser.add_argument("--drop", type=seq_list, default=[], help="send: seqs to skip, 1,5")
    parser.add_argument("--duplicate", type=seq_list, default=[], help="send: seqs to repeat")
    options = parser.parse_args()
    endpoint = options.to or DEFAULT_ENDPOINT[options.transport]
    if options.role == "receive":
        processes.run(receiver_main(options.transport, endpoint, options.producers))
    else:
        processes.run(sender_main(options.transport, endpoint, options))


if __name__ == "__main__":
    main()
