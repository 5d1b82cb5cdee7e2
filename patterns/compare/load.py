"""Every transport on the same work, under load: throughput, latency, CPU, backlog memory.

Three shapes, each with the idiomatic code of its notebook:

* fan-out: one publisher, 4 subscribers (`patterns.pubsub`: Redis Pub/Sub, ZeroMQ
  PUB/SUB, AMQP fanout, Redis Streams), the subscribers as `patterns.pubsub.load` opens
  them, all in one process;
* work queue: one producer, 2 competing workers (`patterns.compare.workqueue`), both in
  one process;
* request/reply: one requester, 2 repliers (`patterns.reqrep`: ZeroMQ DEALER/ROUTER, the
  DEALER connected to both repliers' ROUTERs; AMQP reply queue, AMQP direct reply-to,
  Redis Streams), each replier a process.

For fan-out and work queue a producing and a consuming child run *steps*: first a
closed loop (as fast as the producer can send, one `await` per message), then, in a
second pair of children, open-loop steps at offered rates shared by every transport of
the shape, below the slowest one's closed-loop rate, each probe stamped with the time
it was *scheduled* (so a stall shows in the latency instead of slowing the load down).
Each child reports the CPU seconds it used while working (not while importing); the
broker's CPU is read from its process. Request/reply: a closed loop with 200 requests in
flight, then `patterns.reqrep`'s open-loop requester at the shared rates. Last, what the
brokers hold for a backlog of unread messages, and what a reader that comes late can still
read (`patterns.compare.replay`).

    python -m patterns.compare.load consume --shape fanout --transport redis --where t \
        -n 4 --counts 1000,500 --idle 5
    python -m patterns.compare.load produce --shape fanout --transport redis --where t \
        -n 4 --counts 1000,500 --rates 0,250
"""

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import zmq.asyncio
from pamqp.commands import Basic

from patterns import cli, clients, config, processes
from patterns.compare import replay, workqueue
from patterns.events import OnEvent, log_event
from patterns.measure import (
    DeliveryLedger,
    LatencyRecorder,
    ThroughputMeter,
    end_marker,
    probe,
    read_end,
    read_probe,
    reporting,
)
from patterns.messages import MalformedMessage
from patterns.pubsub import load as pubsub_load
from patterns.pubsub import redis_pubsub_fast, redis_streams_fast
from patterns.reqrep import NAMES as REQREP_NAMES
from patterns.reqrep import RequestFailed, RequestTimeout, connect
from patterns.reqrep import load as reqrep_load
from patterns.reqrep.pacing import timer_paced

SHAPES = {
    "fanout": ("redis", "zmq", "amqp", "streams"),
    "workqueue": workqueue.TRANSPORTS,
    "reqrep": ("zmq", "amqp", "amqp-direct", "redis"),
}
NAMES = {
    "fanout": pubsub_load.NAMES,
    "workqueue": workqueue.NAMES,
    "reqrep": REQREP_NAMES,
}
CONSUMERS = {"fanout": 4, "workqueue": 2, "reqrep": 2}
SIZE = 64  # bytes per message, every shape (a request/reply's JSON is about that)
# The offered rates, the same for every transport of a shape (publishes, tasks or requests
# per second): below the slowest one's closed-loop throughput here (AMQP's, a confirm per
# message: a few hundred per second on a busy 2-core machine), which the notebook checks.
RATES = {"fanout": (20, 50, 100), "workqueue": (20, 50, 100), "reqrep": (10, 20, 50)}
IN_FLIGHT = 50  # requests outstanding in request/reply's closed loop
PATIENCE_S = 30.0  # a request of the closed loop waits this long for its reply
BATCH = 100  # probes handed to the producer at once in a closed loop
IDLE_S = 5.0  # consumers that hear nothing this long stop: the rest was lost


# ---- the consuming child ---------------------------------------------------------------


def step_of(producer: str) -> int:
    return int(producer[1:])  # probes of step k are sent as producer "sk"


class Steps:
    """Per step: the ledgers, the latencies, the first and last arrival.

    Fan-out: a ledger per subscriber (each must get every message, in order). Work queue:
    one ledger for all workers (each message to one of them: lost and duplicated count
    over the whole), and one per worker for the order (two workers interleave; what each
    one gets should still come in the order it was sent)."""

    def __init__(self, counts: list[int], shared: bool) -> None:
        self.counts, self.shared = counts, shared
        self.ledgers = [DeliveryLedger() for _ in counts]  # (step) -> key -> seqs
        self.orders = [DeliveryLedger() for _ in counts]  # per consumer, for the order
        self.latency = [LatencyRecorder(capacity=max(1, 4 * c)) for c in counts]
        self.span = [[0, 0] for _ in counts]
        self.overall = LatencyRecorder(capacity=max(1, 4 * sum(counts)))  # for the live plot

    def record(self, key: int, frame: bytes, now_ns: int) -> None:
        producer, seq, sent_ns = read_probe(frame)
        step = step_of(producer)
        self.ledgers[step].record(0 if self.shared else key, seq)
        self.orders[step].record(key, seq)
        self.latency[step].record(sent_ns, now_ns)
        self.overall.record(sent_ns, now_ns)
        span = self.span[step]
        span[0] = span[0] or now_ns
        span[1] = now_ns

    def result(self, consumers: int) -> list[dict]:
        rows = []
        keys = [0] if self.shared else list(range(consumers))
        for step, count in enumerate(self.counts):
            report = self.ledgers[step].report(dict.fromkeys(keys, count))
            order = self.orders[step].report({})
            first, last = self.span[step]
            summary = self.latency[step].summary()
            rows.append(
                {
                    "sent": count,
                    "delivered": report.received,
                    "rate": round(report.received * 1e9 / max(1, last - first)),
                    "lost": report.lost,
                    "duplicated": report.duplicated,
                    "reordered": order.out_of_order,
                    "p50_ms": summary.p50_ns / 1e6,
                    "p99_ms": summary.p99_ns / 1e6,
                    "p999_ms": summary.p999_ns / 1e6,
                    "max_ms": summary.max_ns / 1e6,
                }
            )
        return rows


def pubsub_options(options: argparse.Namespace) -> argparse.Namespace:
    """What `patterns.pubsub.load`'s subscriber and publisher read from their options."""
    total = sum(options.counts) + 1
    return argparse.Namespace(
        transport=options.transport,
        topic=options.where,
        endpoint=options.where,
        hwm=total,  # ZeroMQ PUB drops beyond its high-water mark: here, nothing is dropped
        handshake=True,
        subscribers=options.consumers,
        maxlen=total,  # a stream trimmed under lagging readers would lose entries
    )


@contextlib.asynccontextmanager
async def consumers(
    options: argparse.Namespace, context: zmq.asyncio.Context
) -> AsyncIterator[list[AsyncIterator[list[bytes]]]]:
    async with contextlib.AsyncExitStack() as stack:
        if options.shape == "fanout":
            opened = [
                await stack.enter_async_context(
                    pubsub_load.subscription(pubsub_options(options), context)
                )
                for _ in range(options.consumers)
            ]
        else:
            opened = [
                pubsub_load.one_by_one(
                    await stack.enter_async_context(
                        workqueue.worker(options.transport, options.where, context)
                    )
                )
                for _ in range(options.consumers)
            ]
        yield opened


async def drain(
    key: int,
    batches: AsyncIterator[list[bytes]],
    steps: Steps,
    meter: ThroughputMeter,
    last: list[int],
    everything: asyncio.Event,
    total: float,
) -> int:
    """Record each probe this consumer gets until an end marker (fan-out) or until the
    consumers together have had `total` (work queue); return the malformed."""
    malformed = 0
    async for batch in batches:
        now_ns = time.perf_counter_ns()
        last[0] = now_ns
        for frame in batch:
            try:
                if read_end(frame) is not None:
                    return malformed
                steps.record(key, frame, now_ns)
            except MalformedMessage:
                malformed += 1
        meter.add(len(batch))
        if meter.count >= total:
            everything.set()
    return malformed


async def consumer_main(options: argparse.Namespace) -> None:
    steps, meter = Steps(options.counts, options.shape == "workqueue"), ThroughputMeter()
    context = zmq.asyncio.Context()
    last = [0]  # the last arrival, for the watchdog
    everything = asyncio.Event()
    malformed = 0
    try:
        async with consumers(options, context) as opened:
            processes.report("ready", consumers=len(opened))
            cpu_started = time.process_time()
            meter.started_ns = time.perf_counter_ns()
            total = sum(options.counts) if options.shape == "workqueue" else float("inf")
            drains = [
                asyncio.create_task(drain(key, batches, steps, meter, last, everything, total))
                for key, batches in enumerate(opened)
            ]
            done = asyncio.ensure_future(asyncio.gather(*drains))
            had_all = asyncio.ensure_future(everything.wait())
            watchdog = asyncio.ensure_future(quiet_for(last, options.idle))
            async with reporting(processes.report, meter, steps.overall):
                await asyncio.wait((done, had_all, watchdog), return_when=asyncio.FIRST_COMPLETED)
            cpu_s = time.process_time() - cpu_started
            if done.done():
                malformed = sum(done.result())
            # the result first: closing the consumers (a read cancelled mid-reply) must not
            # hold it back
            processes.report(
                "result",
                steps=steps.result(options.consumers),
                malformed=malformed,
                cpu_s=round(cpu_s, 3),
            )
            for task in (*drains, done, had_all, watchdog):
                task.cancel()
            await asyncio.wait((*drains, done, had_all, watchdog), timeout=5)
    finally:
        context.destroy(linger=0)


async def quiet_for(last: list[int], idle_s: float) -> None:
    """Return once nothing has arrived for `idle_s` (after a first arrival; before it, the
    producer may still be starting: three times as long)."""
    waited_from = time.perf_counter_ns()
    while True:
        await asyncio.sleep(0.1)
        quiet_s = (time.perf_counter_ns() - (last[0] or waited_from)) / 1e9
        if quiet_s > (idle_s if last[0] else 3 * idle_s + processes.READY_TIMEOUT_S):
            return


# ---- the producing child ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def sender(
    options: argparse.Namespace, context: zmq.asyncio.Context
) -> AsyncIterator[pubsub_load.Send]:
    if options.shape == "fanout":
        async with pubsub_load.publisher(pubsub_options(options), context) as send:
            yield send
    else:
        async with workqueue.producer(
            options.transport, options.where, options.consumers, context
        ) as send:
            yield send


async def send_step(send: pubsub_load.Send, step: int, count: int, rate: float) -> None:
    """`count` probes: as fast as `send` takes them (rate 0), or at `rate` per second, each
    stamped with when it was due (a Linux timerfd keeps the schedule while the event loop
    also reads the broker's confirms)."""
    name = f"s{step}"
    if not rate:
        for start in range(0, count, BATCH):
            now = time.perf_counter_ns()
            batch = min(BATCH, count - start)
            await send([probe(name, start + i, now, SIZE) for i in range(batch)])
        return
    seq = 0
    async for due in timer_paced(rate, count):
        await send([probe(name, seq + i, sent_ns, SIZE) for i, sent_ns in enumerate(due)])
        seq += len(due)


async def producer_main(options: argparse.Namespace) -> None:
    context = zmq.asyncio.Context()
    try:
        async with sender(options, context) as send:
            processes.report("ready")
            while options.go and not os.path.exists(options.go):  # noqa: ASYNC110, ASYNC240
                await asyncio.sleep(0.01)  # the consumers are not ready yet: a file says so
            cpu_started, started = time.process_time(), time.perf_counter()
            for step, (count, rate) in enumerate(zip(options.counts, options.rates, strict=True)):
                await send_step(send, step, count, rate)
            elapsed = time.perf_counter() - started
            if options.shape == "fanout":
                await send([end_marker("s0", 0)])
            cpu_s = time.process_time() - cpu_started
    finally:
        context.destroy(linger=10_000)  # what is still queued goes out (up to 10 s)
    sent = sum(options.counts)
    processes.report("result", sent=sent, rate=round(sent / elapsed), cpu_s=round(cpu_s, 3))


# ---- from the notebook -----------------------------------------------------------------


class BrokerCpu:
    """CPU seconds the broker's process used between `start` and `stop` (None: no broker
    here to measure, or it is not on this machine)."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.started = self.used = None

    def seconds(self) -> float | None:
        if self.process is None:
            return None
        with contextlib.suppress(psutil.Error):
            times = self.process.cpu_times()
            return times.user + times.system
        return None

    def start(self) -> None:
        self.started = self.seconds()

    def stop(self) -> float | None:
        now = self.seconds()
        if now is None or self.started is None:
            return None
        self.used = now - self.started
        return self.used


async def broker_cpu(transport: str) -> BrokerCpu:
    broker = {"zmq": None, "streams": "redis", "redis": "redis"}.get(transport, "amqp")
    return BrokerCpu(await reqrep_load.broker_pid(broker) if broker else None)


def where_for(shape: str, transport: str) -> str:
    if transport == "zmq":
        return pubsub_load.free_endpoint()
    return f"compare:{shape}:{transport}:{uuid.uuid4().hex[:8]}"


async def forget(shape: str, transport: str, where: str) -> None:
    """Delete what a run left in a broker: the work queue's queue or stream, the fan-out's
    exchange or stream (a Pub/Sub channel and ZeroMQ keep nothing)."""
    if shape == "workqueue":
        await workqueue.forget(transport, where)
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await channel.exchange_delete(where)
    elif transport == "streams":
        async with clients.redis() as redis:
            await redis.delete(where)


async def run_steps(
    shape: str,
    transport: str,
    counts: list[int],
    rates: list[float],
    plot: Any = None,
    series: str | None = None,
) -> dict:
    """A consuming and a producing child on the steps (count, rate); rate 0 = closed loop.
    The consumers' result (a row per step), with the CPU seconds of ours and the broker's."""
    where = where_for(shape, transport)
    common = ["--shape", shape, "--transport", transport, "--where", where]
    common += ["-n", str(CONSUMERS[shape]), "--counts", ",".join(map(str, counts))]
    cpu = await broker_cpu(transport)
    go = os.path.join(tempfile.gettempdir(), f"patterns-go-{uuid.uuid4().hex}")
    try:
        async with processes.children() as started:
            # both start at once (imports take a second or two here); the producer sends
            # once the consumers are ready: it waits for the file `go`
            rates_text = ",".join(map(str, rates))
            consumer, producer = await processes.together(
                processes.start(__name__, "consume", *common, "--idle", str(IDLE_S)),
                processes.start(__name__, "produce", *common, "--rates", rates_text, "--go", go),
            )
            started += [consumer, producer]
            cpu.start()
            Path(go).touch()  # noqa: ASYNC240 (tmpfs, at once)
            label = series or NAMES[shape][transport]
            received = pubsub_load.follow(consumer, plot, label, None)
            result, sent = await processes.together(received, producer.next_report("result"))
            broker_s = cpu.stop()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(go)
        await forget(shape, transport, where)
    return result | {
        "ours_cpu_s": result["cpu_s"] + sent["cpu_s"],
        "broker_cpu_s": broker_s,
        "send_rate": sent["rate"],
    }


def per_thousand(seconds: float | None, messages: int) -> float | None:
    return None if seconds is None else round(seconds * 1000 / max(1, messages), 4)


async def one_transport(
    shape: str, transport: str, rates: list[float], seconds: float, count: int, plot: Any
) -> dict:
    """A fan-out or work-queue transport: open loop at `rates` for `seconds` each, then a
    closed loop on `count` messages, in one pair of children (the open steps first: a
    closed loop leaves a backlog behind it that would be timed as latency)."""
    counts = [max(1, round(rate * seconds)) for rate in rates] + [count]
    run = await run_steps(shape, transport, counts, [*rates, 0], plot)
    *opened, closed = run["steps"]
    delivered = sum(row["delivered"] for row in run["steps"])
    return {
        "throughput": closed["rate"] // (CONSUMERS[shape] if shape == "fanout" else 1),
        "deliveries_per_s": closed["rate"],
        "lost": sum(row["lost"] for row in run["steps"]),
        "duplicated": sum(row["duplicated"] for row in run["steps"]),
        "reordered": sum(row["reordered"] for row in run["steps"]),
        "ours_cpu_per_1000": per_thousand(run["ours_cpu_s"], delivered),
        "broker_cpu_per_1000": per_thousand(run["broker_cpu_s"], delivered),
        "open_loop": [{"offered": rate} | row for rate, row in zip(rates, opened, strict=True)],
    }


async def start_repliers(transport: str, address: str) -> list[processes.Child]:
    """The 2 repliers of `transport`'s requester, started at once: sharing the queue or
    stream `address`; ZeroMQ: each bound to a free port (the requester connects to both)."""
    where = None if transport == "zmq" else address
    return await processes.together(
        *(reqrep_load.start_replier(transport, where) for _ in range(CONSUMERS["reqrep"]))
    )


def address_of(transport: str, repliers: list[processes.Child]) -> str:
    """What the requester is given: the queue or stream; ZeroMQ: every replier's endpoint."""
    if transport == "zmq":
        return ",".join(reqrep_load.address_of(transport, child) for child in repliers)
    return reqrep_load.address_of(transport, repliers[0])


def child_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def reqrep_closed_loop(transport: str, where: str, pids: list[int], seconds: float) -> dict:
    """Requests/s with `IN_FLIGHT` outstanding, the requester in this process."""
    async with connect(transport, where, timeout=PATIENCE_S) as requester:
        await requester.request(reqrep_load.REQUEST, timeout=processes.READY_TIMEOUT_S)
        cpu = await broker_cpu(transport)
        ours_before, cpu_before = child_cpu(pids), time.process_time()
        cpu.start()
        done = failed = 0
        started = time.perf_counter()
        deadline = started + seconds

        async def keep_asking() -> None:
            nonlocal done
            nonlocal failed
            while time.perf_counter() < deadline:
                try:
                    await requester.request(reqrep_load.REQUEST)
                except (RequestFailed, RequestTimeout):
                    failed += 1
                else:
                    done += 1

        await asyncio.gather(*(keep_asking() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        broker_s = cpu.stop()
        ours_s = child_cpu(pids) - ours_before + time.process_time() - cpu_before
    return {
        "throughput": round(done / elapsed),
        "deliveries_per_s": round(done / elapsed),
        "lost": failed,  # requests not answered: timed out or refused
        "duplicated": 0,
        "reordered": None,
        "ours_cpu_per_1000": per_thousand(ours_s, done),
        "broker_cpu_per_1000": per_thousand(broker_s, done),
    }


async def reqrep_open_loop(
    transport: str,
    where: str,
    pids: list[int],
    rates: list[float],
    seconds: float,
    plot: Any = None,
) -> list[dict]:
    """`patterns.reqrep`'s open-loop requester (a child) at `rates`, the repliers running."""
    options = ["--transport", transport, "--to", where, "--seconds", str(seconds)]
    options += ["--rates", ",".join(map(str, rates)), "--replier-pid", str(pids[0])]
    async with processes.children() as started:
        load = await processes.start("patterns.reqrep", "load", *options)
        started.append(load)
        if plot is None:
            result = await load.next_report("result")
        else:
            result = await plot.follow(REQREP_NAMES[transport], load.reports())
    return [
        {
            "offered": step["offered"],
            "sent": step["sent"],
            "delivered": step["answered"],
            "rate": step["achieved"],
            "lost": step["sent"] - step["answered"],  # timed out, refused or failed
            "duplicated": 0,
            "reordered": None,
        }
        | {key: step[key] for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms")}
        for step in result["steps"]
    ]


async def measure_shape(
    shape: str,
    count: int,
    seconds: float,
    plot: Any = None,
    on_event: OnEvent = log_event,
) -> dict:
    """The shared open-loop rates, then a closed loop, for every transport of `shape`."""
    rates = list(RATES[shape])
    if shape == "reqrep":
        transports = await reqrep_both(rates, seconds, plot, on_event)
    else:
        transports = {}
        for transport in SHAPES[shape]:
            transports[transport] = await one_transport(
                shape, transport, rates, seconds, count, plot
            )
            on_event("measured", shape=shape, transport=transport, **transports[transport])
    return {"consumers": CONSUMERS[shape], "rates": rates, "transports": transports}


async def reqrep_both(
    rates: list[float], seconds: float, plot: Any, on_event: OnEvent
) -> dict[str, dict]:
    """Request/reply's open loops, then its closed loops, every transport's repliers
    started at once before and stopped after (their queues and streams deleted)."""
    transports = SHAPES["reqrep"]
    addresses = {t: f"compare:reqrep:{t}:{uuid.uuid4().hex[:8]}" for t in transports}
    closed: dict[str, dict] = {}
    opened: dict[str, list[dict]] = {}
    try:
        async with processes.children() as started:
            groups = await processes.together(
                *(start_repliers(t, addresses[t]) for t in transports)
            )
            for group in groups:
                started += group
            where = {t: address_of(t, g) for t, g in zip(transports, groups, strict=True)}
            pids = {t: [child.pid for child in g] for t, g in zip(transports, groups, strict=True)}
            for t in transports:
                opened[t] = await reqrep_open_loop(t, where[t], pids[t], rates, seconds, plot)
                closed[t] = await reqrep_closed_loop(t, where[t], pids[t], seconds)
                closed[t]["open_loop"] = opened[t]
                on_event("measured", shape="reqrep", transport=t, **closed[t])
    finally:
        for t in transports:
            await reqrep_load.forget(t, addresses[t])
    return closed


# ---- broker memory with a backlog --------------------------------------------------------


async def used_memory(redis: Any) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def streams_backlog(count: int) -> dict:
    """A stream holding `count` unread entries: the growth of Redis's used_memory."""
    stream = f"compare:backlog:{uuid.uuid4().hex[:8]}"
    async with clients.redis() as redis:
        before = await used_memory(redis)
        try:
            for start in range(0, count, 1_000):
                batch = [probe("s0", i, 0, SIZE) for i in range(start, min(count, start + 1_000))]
                await redis_streams_fast.publish_many(redis, batch, stream, maxlen=count)
            held = await redis.xlen(stream)
            after = await used_memory(redis)
        finally:
            await redis.delete(stream)
    return {"held": held, "growth_bytes": after - before, "where": "the stream, in Redis"}


async def pubsub_backlog(count: int) -> dict:
    """A subscriber that stops reading while `count` messages are published: Redis keeps
    them in that client's output buffer (until its limit; then it cuts the subscriber)."""
    channel = f"compare:backlog:{uuid.uuid4().hex[:8]}"
    async with clients.redis() as redis, clients.redis() as subscriber:
        pubsub = subscriber.pubsub()
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation; then, no reads
        before = await used_memory(redis)
        try:
            for start in range(0, count, 1_000):
                batch = [probe("s0", i, 0, SIZE) for i in range(start, min(count, start + 1_000))]
                await redis_pubsub_fast.publish_many(redis, batch, channel)
            after = await used_memory(redis)
            listed = await redis.client_list(_type="pubsub")
            buffered = sum(int(c.get("omem", 0)) for c in listed)
            held = None if not listed else count  # still subscribed: every message held
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
    return {
        "held": held,
        "growth_bytes": after - before,
        "output_buffer_bytes": buffered,
        "where": "the socket buffers, then the subscriber's output buffer in Redis",
    }


async def amqp_backlog(count: int) -> dict:
    """A durable queue holding `count` persistent messages: its memory, as RabbitMQ counts it
    (`rabbitmqctl list_queues`), and the growth of the broker process's resident memory."""
    queue = f"compare:backlog:{uuid.uuid4().hex[:8]}"
    pid = await reqrep_load.broker_pid("amqp")
    rss = (lambda: psutil.Process(pid).memory_info().rss) if pid else (lambda: 0)
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        before = rss()
        try:
            underlay = await channel.get_underlay_channel()
            for start in range(0, count, 1_000):
                await asyncio.gather(
                    *(
                        underlay.basic_publish(
                            probe("s0", i, 0, SIZE),
                            routing_key=queue,
                            properties=Basic.Properties(delivery_mode=2),
                        )
                        for i in range(start, min(count, start + 1_000))
                    )
                )
            declared = await channel.declare_queue(queue, durable=True)
            held = declared.declaration_result.message_count
            queue_bytes = await rabbitmq_queue_memory(queue)
            after = rss()
        finally:
            await channel.queue_delete(queue)
    return {
        "held": held,
        "growth_bytes": queue_bytes if queue_bytes is not None else after - before,
        "process_growth_bytes": after - before if pid else None,
        "where": "the queue, in RabbitMQ (messages paged to disk as it grows)",
    }


async def rabbitmq_queue_memory(queue: str) -> int | None:
    """`rabbitmqctl list_queues name memory` for one queue (None: rabbitmqctl unavailable)."""
    try:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "list_queues", "name", "memory",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except FileNotFoundError:
        return None
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    for line in out.decode().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == queue and fields[1].isdigit():
            return int(fields[1])
    return None


async def backlog_memory(count: int) -> dict[str, dict]:
    """Broker memory with `count` unread messages, per broker-held backlog."""
    zmq_note = {
        "held": None,
        "growth_bytes": None,
        "where": "no broker: queued in the peers' sockets up to the high-water mark",
    }
    return {
        "count": count,
        "redis": await pubsub_backlog(count),
        "streams": await streams_backlog(count),
        "amqp": await amqp_backlog(count),
        "zmq": zmq_note,
    }


# ---- everything -------------------------------------------------------------------------

COUNT = {True: 500, False: 5_000}  # closed-loop messages per transport
SECONDS = {True: 0.5, False: 4.0}  # per offered rate, and request/reply's closed loop
BACKLOG = {True: 10_000, False: 100_000}


async def under_load(
    quick: bool, plots: dict[str, Any] | None = None, on_event: OnEvent = log_event
) -> dict:
    """Every shape, closed and open loop, and the backlog's memory: one JSON-able dict."""
    plots = plots or {}
    results: dict[str, Any] = {"scale": "quick" if quick else "full", "size": SIZE}
    for shape in SHAPES:
        results[shape] = await measure_shape(
            shape, COUNT[quick], SECONDS[quick], plots.get(shape), on_event
        )
    results["backlog"] = await backlog_memory(BACKLOG[quick])
    results["replay"] = await replay.late_readers()
    return results


def quick_default() -> bool:
    return config.SCALE == "small"


# ---- the children's command line ---------------------------------------------------------


def numbers(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None
        if any(value < 0 for value in values):
            raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
        return values

    return parse


def parser() -> cli.Parser:
    top = cli.Parser(prog="python -m patterns.compare.load", description=__doc__.split("\n")[0])
    roles = top.roles()
    consume = roles.add_parser("consume", help="N consumers in one process, measured")
    produce = roles.add_parser("produce", help="numbered probes, step by step")
    for role in (consume, produce):
        role.add_argument("--shape", choices=("fanout", "workqueue"), required=True)
        role.add_argument("--transport", choices=SHAPES["fanout"], required=True)
        role.add_argument("--where", required=True, help="channel, queue, stream or endpoint")
        role.add_argument("--consumers", "-n", type=pubsub_load.count, default=1)
        role.add_argument("--counts", type=numbers(int), required=True, help="probes per step")
        cli.add_give_up(role)
    produce.add_argument("--go", help="send once this file exists (the consumers are ready)")
    produce.add_argument("--rates", type=numbers(float), help="per step, per s; 0: closed loop")
    consume.add_argument("--idle", type=cli.positive, default=IDLE_S, help="stop after s quiet")
    return top


def main() -> None:
    top = parser()
    options = top.parse_args()
    if options.shape == "workqueue" and options.transport not in workqueue.TRANSPORTS:
        top.error(f"--transport {options.transport}: no work queue over it")
    if options.role == "produce":
        options.rates = options.rates or [0.0] * len(options.counts)
        if len(options.rates) != len(options.counts):
            top.error("--rates: one per step, as many as --counts")
    role = consumer_main if options.role == "consume" else producer_main
    cli.run(role(options), options.role, options.give_up_after)


if __name__ == "__main__":
    main()
