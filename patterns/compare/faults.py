"""Every transport under the same faults, each counted with the delivery ledger.

    results = await under_faults(quick=True)       # {fault: {transport: result}}
    result = await run_fault("cut", "redis", quick=True)

Four faults, each injected while a producer in this process sends numbered probes
(`patterns.measure.probe`) at a fixed rate, open loop, to consumers that are child
processes (`python -m patterns.compare.faults consume ...`), so a fault can be real:

* **sigkill**: a consumer killed with SIGKILL at 30% of the run. Work-queue shape (one
  producer, two workers) for ZeroMQ PUSH/PULL, AMQP competing consumers and a Redis
  Streams consumer group (the survivor claims what the dead one left pending); beside each,
  under "fanout", a subscriber killed and started again 0.5 s later (ZeroMQ PUB/SUB; AMQP on
  its durable queue; Streams from the last entry it handled); Redis Pub/Sub, which has no
  work queue, in the fan-out shape only;
* **cut**: a subscriber's connection cut for 2 s by `patterns.faults.Proxy`, then
  restored (fan-out: one subscriber through the proxy, one direct);
* **restart**: a private `redis-server` (`patterns.faults.RedisServer`) restarted mid-run,
  without (the result) and with (its "aof") the append-only file, and a private RabbitMQ
  node (`patterns.faults.RabbitNode`) killed with SIGKILL and started again, while a
  subscriber reading at half the producer's rate holds a backlog; where no private node
  can start (no `rabbitmq-server`, or neither root nor its user), what RabbitMQ's
  documentation promises, marked "documented, not measured";
* **slow**: a subscriber 10x slower than the producer (1 KB messages), next to one at full
  speed: what the broker holds for it (a private Redis's memory and the subscriber's
  output buffer, the AMQP queue's depth), whether the producer falls behind, whether the
  other subscriber notices; ZeroMQ with short queues (a high-water mark of 100 and the
  least kernel buffers on the slow side), so its drops show; then the slow one is sped up
  (SIGUSR1) to drain what waits for it.

The transports of one fault run side by side (each fault has its own channel, queues and
processes), at 250 probes/s each: a 2-core machine must stay idle enough that the fault
is the only trouble. Every run deletes what it created (queues, exchange, stream, private
server), even when cancelled.

A consumer reports each message it handled to this process *before* it acknowledges it
(at least once: a consumer killed between the two has its message delivered again, and
the ledger counts a duplicate). What never reached any consumer is lost.

Each result: {"shape", "sent", "delivered", "lost", "duplicated", "reordered",
"measured", "detail", ...}, with the numbers of the faulted consumer (fan-out: the victim;
work queue: the whole queue) and fault-specific numbers beside them.
"""

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from patterns import cli, clients, config, processes
from patterns.events import OnEvent, log_event
from patterns.faults import NodeUnavailable, Proxy, RabbitNode, RedisServer
from patterns.measure import DeliveryLedger, paced, percentiles, probe, read_probe
from patterns.pubsub import amqp_fanout, redis_pubsub, redis_streams, zmq_peers

FAULTS: dict[str, tuple[str, ...]] = {
    "sigkill": ("zmq", "amqp", "streams", "redis"),
    "cut": ("redis", "zmq", "amqp", "streams"),
    "restart": ("redis", "streams", "amqp"),
    "slow": ("redis", "zmq", "amqp", "streams"),
}
NAMES = {
    "redis": "Redis Pub/Sub",
    "zmq": "ZeroMQ",
    "amqp": "AMQP",
    "streams": "Redis Streams",
}
WORKQUEUE = {"sigkill": ("zmq", "amqp", "streams")}  # the rest run in the fan-out shape
RABBITMQ_DOCS = (
    "https://www.rabbitmq.com/docs/persistence-conf",
    "https://www.rabbitmq.com/docs/reliability",
)
SIZE = 64  # bytes per probe
SLOW_SIZE = 1024  # bytes per probe in the slow-subscriber run: a backlog worth measuring
SLOW_HWM = 100  # zmq, slow run: the high-water mark on each side, so its drops show
RATE = 250.0  # probes per second: four transports side by side, each with its consumer
# processes, must leave this 2-core machine idle enough that a fault is the only trouble
CONFIRMS = 1_000  # AMQP publishes awaiting their confirm at once: more than a second's
# worth, so a slow disk write (a persistent message for a queue with no consumer) does not
# hold the producer back in the middle of a fault
RETRY_S = 0.2  # AMQP: a publish that failed with its connection is tried again this often
PREFETCH = 50  # AMQP unacked deliveries per consumer; Streams entries per read
MAXLEN = 100_000  # Streams: entries a stream keeps, more than any run sends
RUN_LIMIT_S = 120.0  # a fault run longer than its probes' schedule plus this has hung
CLAIM_IDLE_MS = 1_000  # a Streams group entry pending this long is taken over
QUIET_S = 1.5  # no delivery for this long after the last send: the run is over
CAP_S = 30.0  # at most this long to drain after the last send
HWM = zmq_peers.HWM
KILL_AT = 0.3  # of the run: when a consumer is killed
RESTART_COUNT = 10  # Streams entries a reader takes at once in the restart run
LOG_EVERY = 100  # a consumer logs every so many messages handled
log = logging.getLogger("patterns.compare.faults")
MODULE = (
    "patterns.compare.faults"  # what a consumer runs (`__name__` is "__main__" from a terminal)
)
LATENCY_LIMIT_NS = 60 * 10**9


@dataclass(frozen=True)
class Size:
    rate: float  # probes per second, open loop
    count: int

    @property
    def seconds(self) -> float:
        return self.count / self.rate


def size(fault: str, quick: bool) -> Size:
    """How many probes, how fast: `quick` (or PATTERNS_SCALE=small) is the test suite's."""
    small = quick or config.SCALE == "small"
    seconds = {"sigkill": (8, 4), "cut": (10, 5), "restart": (8, 3), "slow": (8, 2)}[fault]
    return Size(rate=RATE, count=int(RATE * seconds[1 if small else 0]))


Send = Callable[[list[bytes]], Awaitable[object]]


def shape_of(fault: str, transport: str) -> str:
    return "workqueue" if transport in WORKQUEUE.get(fault, ()) else "fanout"


def unique(prefix: str) -> str:
    """A name no other run uses: queues, streams, exchanges are deleted at the end."""
    return f"compare.faults.{prefix}.{uuid.uuid4().hex[:8]}"


# ---- the consumer: a child process -------------------------------------------------------


class Handler:
    """What a consumer does with each message: `work_ms` of blocking work (a slow consumer;
    SIGUSR1 makes it fast), then it tells the parent, before the message is acknowledged."""

    def __init__(self, work_ms: float) -> None:
        self.work_s = work_ms / 1000
        self.handled = 0

    def fast(self) -> None:
        self.work_s = 0.0

    def handle(self, messages: list[bytes], last_id: str | None = None) -> None:
        seqs, lat = [], []
        for message in messages:
            if self.work_s:
                time.sleep(self.work_s)  # deliberate: work that blocks
            _, seq, sent_ns = read_probe(message)
            seqs.append(seq)
            lat.append((time.perf_counter_ns() - sent_ns) // 1000)
        self.handled += len(seqs)
        if self.handled // LOG_EVERY > (self.handled - len(seqs)) // LOG_EVERY:
            log.info("handled %d, the last seq %d", self.handled, seqs[-1])
        fields: dict[str, Any] = {"seqs": seqs, "lat_us": lat}
        if last_id is not None:
            fields["id"] = last_id
        processes.report("got", **fields)


def note(event: str, **fields: object) -> None:
    """A consumer's events (resubscribed, reconnected...) go to the parent, timestamped."""
    log.info("%s %s", event, fields)
    processes.report("note", what=event, t_ns=time.perf_counter_ns(), **fields)


async def consume(options: argparse.Namespace) -> None:
    handler = Handler(options.work_ms)
    # not the event loop's signal handling: a consumer whose messages are already buffered
    # never gives its loop a turn, and would not hear it until its backlog was drained
    signal.signal(signal.SIGUSR1, lambda *_: handler.fast())

    def ready() -> None:  # with the moment, on the clock every process here shares
        processes.report("ready", name=options.name, t_ns=time.perf_counter_ns())

    target, transport = options.target, options.transport
    log.info("%s: %s %s consumer of %s", options.name, transport, options.shape, target)
    if transport == "redis":
        async with (
            clients.redis() as redis,
            redis_pubsub.subscription(redis, target, note) as messages,
        ):
            ready()
            async for message in messages:
                handler.handle([message])
    elif transport == "streams" and options.shape == "fanout":
        async with (
            clients.redis() as redis,
            redis_streams.subscription(
                redis, target, options.after, options.count, on_event=note
            ) as entries,
        ):
            ready()
            async for entry_id, message in entries:
                handler.handle([message], entry_id.decode())
    elif transport == "streams":
        async with clients.redis() as redis:
            ready()
            await group_consumer(redis, target, options.group, options.name, handler)
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            connection.reconnect_callbacks.add(lambda *_: note("reconnected"))
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(target, durable=True)  # declared by the parent
            async with queue.iterator() as deliveries:
                ready()
                async for message in deliveries:
                    handler.handle([message.body])
                    await acked(message)
    else:
        context = zmq.asyncio.Context()
        try:
            if options.shape == "fanout" and options.small_buffers:
                subscriber = context.socket(zmq.SUB)
                subscriber.rcvhwm, subscriber.rcvbuf = options.hwm, 1  # the kernel's least
                subscriber.subscribe(zmq_peers.TOPIC + b" ")
                subscriber.connect(target)
                ready()
                async for message in zmq_peers.messages(subscriber, len(zmq_peers.TOPIC) + 1):
                    handler.handle([message])
            elif options.shape == "fanout":
                async with zmq_peers.subscription(
                    context, [target], zmq_peers.TOPIC, options.hwm, note
                ) as messages:
                    ready()
                    async for message in messages:
                        handler.handle([message])
            else:
                puller = context.socket(zmq.PULL)
                puller.rcvhwm = options.hwm
                puller.connect(target)
                ready()
                while True:
                    handler.handle([await puller.recv()])
        finally:
            context.destroy(linger=0)


async def acked(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """Ack after handling; an ack its lost connection cannot carry is no error: the broker
    delivers the message again (the ledger counts a duplicate). aiormq fails such an ack
    with ChannelInvalidStateError, or with a bare Exception when the connection dropped
    while the ack was being written."""
    try:
        await message.ack()
    except Exception as error:
        log.info("ack of a delivery lost with its connection: %r", error)


async def group_consumer(redis: Any, stream: str, group: str, name: str, handler: Handler) -> None:
    """A consumer of a Streams group: XREADGROUP, handle, XACK; every half `CLAIM_IDLE_MS`
    it takes over what another consumer left pending for longer (XAUTOCLAIM)."""
    claimed_at = time.monotonic()
    while True:
        entries: list = []
        if time.monotonic() - claimed_at > CLAIM_IDLE_MS / 2000:
            claimed_at = time.monotonic()
            _, entries, *_ = await redis.xautoclaim(
                stream, group, name, min_idle_time=CLAIM_IDLE_MS, count=PREFETCH
            )
        if not entries:
            reply = await redis.xreadgroup(group, name, {stream: ">"}, PREFETCH, 200)
            entries = [entry for _, batch in reply for entry in batch]
        if entries:
            handler.handle([fields[b"message"] for _, fields in entries])
            await redis.xack(stream, group, *(entry_id for entry_id, _ in entries))


# ---- the parent: producer, ledger, fault -------------------------------------------------


@dataclass
class Trial:
    """One run: the producer's schedule, the consumers' reports, a ledger per consumer key
    (fan-out: each subscriber; work queue: the queue as a whole)."""

    fault: str
    transport: str
    shape: str
    size: Size
    on_event: OnEvent
    target: str = ""  # what the consumers read: channel, stream, queue, endpoint
    ledgers: dict[str, DeliveryLedger] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)
    latency_us: dict[str, list[int]] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)  # Streams: last entry id handled
    notes: list[tuple[int, str, str]] = field(default_factory=list)  # (t_ns, name, what)
    sent_ns: list[int] = field(default_factory=list)  # when each probe was published
    lag_ns: int = 0  # the producer's longest delay behind its schedule
    reordered_by_worker: int = 0
    last_got_ns: int = 0
    last_got_by_name: dict[str, int] = field(default_factory=dict)
    message_size: int = SIZE
    children: list[processes.Child] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    faults: list[asyncio.Task] = field(default_factory=list)  # what the hooks started
    failures: list[str] = field(default_factory=list)  # consumers that died of themselves

    def key(self, name: str) -> str:
        return "queue" if self.shape == "workqueue" else name

    async def consumer(
        self, name: str, *args: str, env: dict[str, str] | None = None, target: str = ""
    ) -> processes.Child:
        child = await processes.start(
            MODULE, "consume", "--transport", self.transport, "--shape", self.shape,
            "--name", name, "--target", target or self.target, *args,
            name=f"{self.fault} {self.transport} {name}", env=env,
        )  # fmt: skip
        self.children.append(child)
        self.tasks.append(asyncio.create_task(self._pump(child, name)))
        return child

    async def _pump(self, child: processes.Child, name: str) -> None:
        key = self.key(name)
        ledger = self.ledgers.setdefault(key, DeliveryLedger())
        seen = self.seen.setdefault(key, set())
        latency = self.latency_us.setdefault(name, [])
        last = -1  # this process's last seq: a work-queue worker's order
        async for report in child.reports():
            if report["event"] == "got":
                self.last_got_ns = self.last_got_by_name[name] = time.perf_counter_ns()
                for seq in report["seqs"]:
                    ledger.record(key, seq)
                    seen.add(seq)
                    self.reordered_by_worker += seq < last
                    last = max(last, seq)
                latency.extend(report["lat_us"])
                if "id" in report:
                    self.cursors[name] = report["id"]
            elif report["event"] == "note":
                self.notes.append((report["t_ns"], name, report["what"]))
                fields = {k: v for k, v in report.items() if k != "event"}
                self.on_event("note", fault=self.fault, transport=self.transport, **fields)
        returncode = await child.wait()
        if returncode not in (0, -signal.SIGKILL):  # not stopped, not killed by the fault
            why = (child.log(1) or "no log").strip()
            self.failures.append(f"{name} exited with code {returncode}: {why}")
            self.on_event("consumer failed", fault=self.fault, transport=self.transport, why=why)

    def delivered(self, name: str) -> int:
        return len(self.seen.get(self.key(name), ()))

    def published_between(self, start_ns: int, end_ns: int) -> int:
        """Probes published in [start_ns, end_ns)."""
        return bisect.bisect_left(self.sent_ns, end_ns) - bisect.bisect_left(self.sent_ns, start_ns)

    async def produce(self, send: Send, hooks: dict[int, Callable[[], Any]]) -> None:
        """Every probe at its time, stamped with it, what is due sent together (a producer
        held up catches up at once); at seq k, `hooks[k]()` starts (a fault)."""
        seq = 0
        async for due in paced(self.size.rate, self.size.count, precise=False):
            while due:
                hook = next((k for k in sorted(hooks) if seq <= k < seq + len(due)), None)
                if hook == seq:
                    fault = asyncio.create_task(hooks.pop(seq)())
                    self.tasks.append(fault)
                    self.faults.append(fault)
                    await asyncio.sleep(0)  # the fault begins before the next probe
                    continue
                batch, due = (due[: hook - seq], due[hook - seq :]) if hook else (due, [])
                self.lag_ns = max(self.lag_ns, time.perf_counter_ns() - batch[0])
                await send(
                    [probe("p0", seq + i, t, self.message_size) for i, t in enumerate(batch)]
                )
                self.sent_ns.extend([time.perf_counter_ns()] * len(batch))
                seq += len(batch)
            if seq % 500 < len(due):
                self.on_event("progress", fault=self.fault, transport=self.transport, sent=seq)

    def heard_since(self, name: str, t_ns: int) -> bool:
        """Has consumer `name` reported anything (a delivery, a reconnection) since `t_ns`?"""
        noted = any(t > t_ns and who == name for t, who, _ in self.notes)
        return noted or self.last_got_by_name.get(name, 0) > t_ns

    async def settle(
        self, names: list[str], quiet_s: float = QUIET_S, back: Callable[[], bool] | None = None
    ) -> None:
        """Until every consumer in `names` has had every probe, or none came for `quiet_s`
        (counted only once `back()` says a consumer cut off is back), or `CAP_S` passed."""
        deadline = time.monotonic() + CAP_S
        await asyncio.gather(*self.faults)  # a fault is over (a consumer back) before this
        over_ns = time.perf_counter_ns()
        while time.monotonic() < deadline:
            if all(self.delivered(name) >= self.size.count for name in names):
                await asyncio.sleep(0.2)  # late duplicates still count
                return
            quiet_ns = time.perf_counter_ns() - max(self.last_got_ns, self.sent_ns[-1], over_ns)
            if quiet_ns > quiet_s * 1e9 and (back is None or back()):
                return
            await asyncio.sleep(0.05)

    def counted(self, name: str) -> dict[str, int]:
        key = self.key(name)
        report = self.ledgers.setdefault(key, DeliveryLedger()).report({key: self.size.count})
        return {
            "sent": report.sent,
            "delivered": report.received - report.duplicated,
            "lost": report.lost,
            "duplicated": report.duplicated,
            "reordered": self.reordered_by_worker
            if self.shape == "workqueue"
            else report.out_of_order,
        }

    def lost_seqs(self, name: str) -> list[int]:
        key = self.key(name)
        return sorted(set(range(self.size.count)) - self.seen.get(key, set()))

    def p99_ms(self, name: str) -> float | None:
        lat = self.latency_us.get(name)
        if not lat:
            return None
        summary = percentiles(np.array(lat, dtype=np.int64) * 1000, LATENCY_LIMIT_NS)
        return round(summary.p99_ns / 1e6, 2)

    def result(self, name: str, detail: str, **extra: Any) -> dict:
        failed = {"consumer_failures": self.failures} if self.failures else {}
        return (
            {"shape": self.shape, **self.counted(name), "measured": True, "detail": detail}
            | {"producer_max_lag_ms": round(self.lag_ns / 1e6, 1)}
            | extra
            | failed
        )

    async def close(self) -> None:
        """Its consumers stopped, its tasks cancelled (again, harmlessly, if done already)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(child.stop() for child in self.children), return_exceptions=True)
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- producers, and what each transport needs set up and cleaned up ----------------------


@contextlib.asynccontextmanager
async def producing(
    trial: Trial, url: str | None = None, queues: tuple[str, ...] = (), hwm: int = HWM
) -> AsyncIterator[tuple[Send, Callable[[int], Awaitable[None]]]]:
    """(send, wait_for_consumers(n)) for the trial's transport and shape, its channel set up;
    everything it created is gone afterwards. `url`: a private broker's (default: the
    shared one). `queues`: AMQP fan-out queues (durable, one per subscriber), declared and
    bound before anything is published."""
    transport, shape = trial.transport, trial.shape
    if transport in ("redis", "streams"):
        trial.target = unique(f"{trial.fault}.{transport}")
        redis = clients.redis(url)
        try:
            if transport == "redis":

                async def send(messages: list[bytes]) -> object:
                    async with redis.pipeline(transaction=False) as pipe:  # one round trip
                        for message in messages:
                            pipe.publish(trial.target, message)
                        return await pipe.execute()

                async def wait_for(n: int) -> None:  # Redis says how many have subscribed
                    while (await redis.pubsub_numsub(trial.target))[0][1] < n:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            else:
                if shape == "workqueue":
                    await redis.xgroup_create(trial.target, "workers", id="0", mkstream=True)

                async def send(messages: list[bytes]) -> object:
                    async with redis.pipeline(transaction=False) as pipe:  # one round trip
                        for message in messages:
                            fields = {redis_streams.FIELD: message}
                            pipe.xadd(trial.target, fields, maxlen=MAXLEN, approximate=True)
                        return await pipe.execute()

                async def wait_for(n: int) -> None:
                    pass  # a Streams reader pinned its cursor before it said it was ready

            yield send, wait_for
        finally:

            async def clean_up() -> None:
                await trial.close()  # its consumers first: none may create anything again
                with contextlib.suppress(*clients.REDIS_LOST):
                    await redis.delete(trial.target)
                await redis.aclose()

            await completely(clean_up())
    elif transport == "amqp":
        trial.target = unique(f"{trial.fault}.amqp")
        connection = await clients.amqp(url)
        in_flight: set[asyncio.Task] = set()
        window = asyncio.Semaphore(CONFIRMS)
        try:
            channel = await connection.channel()
            if shape == "workqueue":
                await channel.declare_queue(trial.target, durable=True)

                async def publish(message: bytes) -> object:
                    persistent = aio_pika.DeliveryMode.PERSISTENT
                    body = aio_pika.Message(message, delivery_mode=persistent)
                    return await channel.default_exchange.publish(body, routing_key=trial.target)
            else:
                exchange = await amqp_fanout.declare_exchange(channel, trial.target)
                for queue in queues:
                    await amqp_fanout.declare_queue(channel, queue, trial.target, durable=True)

                async def publish(message: bytes) -> object:
                    return await amqp_fanout.publish(exchange, message)

            async def confirmed(message: bytes) -> None:
                """Published until confirmed: a publish the broker went away before
                confirming is published again once the robust connection is back (at least
                once: it may have been stored already, and be delivered twice)."""
                try:
                    while True:
                        try:
                            return await publish(message)
                        except clients.AMQP_LOST:
                            if connection.is_closed:  # given up on, or closed by us
                                raise
                            await asyncio.sleep(RETRY_S)
                finally:
                    window.release()

            async def send(messages: list[bytes]) -> object:
                """Published in order on one channel; up to CONFIRMS confirms awaited at once
                (one at a time, a persistent message's disk write would set the pace)."""
                for message in messages:
                    await window.acquire()
                    task = asyncio.create_task(confirmed(message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    await asyncio.sleep(0)  # its frames go out now, before the next message's
                return None

            async def wait_for(n: int) -> None:
                pass  # the queues exist already: what is published waits in them

            yield send, wait_for
            await asyncio.gather(*in_flight)  # every confirm, before the queues go
        finally:
            for task in in_flight:
                task.cancel()

            async def clean_up() -> None:
                # its consumers first: a robust connection would declare a deleted queue again
                await trial.close()
                with contextlib.suppress(*clients.AMQP_LOST, RuntimeError):  # closed already
                    channel = await connection.channel()
                    for queue in queues if shape == "fanout" else (trial.target,):
                        await channel.queue_delete(queue)
                    if shape == "fanout":
                        await channel.exchange_delete(trial.target)
                await connection.close()

            await completely(clean_up())
    else:
        context = zmq.asyncio.Context()
        try:
            trial.target = f"tcp://127.0.0.1:{processes.free_port()}"
            if shape == "fanout":
                if hwm == HWM:
                    socket = zmq_peers.bind_publisher(context, trial.target, hwm)
                else:  # short queues: a small high-water mark, the least kernel buffers
                    socket = context.socket(zmq.XPUB)
                    socket.setsockopt(zmq.XPUB_VERBOSE, 1)
                    socket.sndhwm, socket.sndbuf = hwm, 1
                    socket.bind(trial.target)

                async def send(messages: list[bytes]) -> object:
                    for message in messages:
                        await zmq_peers.publish(socket, message)
                    return None

                async def wait_for(n: int) -> None:
                    await zmq_peers.wait_for_subscribers(socket, n)
            else:
                socket = context.socket(zmq.PUSH)
                socket.sndhwm = hwm
                monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
                socket.bind(trial.target)

                async def send(messages: list[bytes]) -> object:
                    for message in messages:
                        await socket.send(message)
                    return None

                async def wait_for(n: int) -> None:  # PUSH deals to whoever is connected now
                    for _ in range(n):
                        await recv_monitor_message(monitor)
                    socket.disable_monitor()

            yield send, wait_for
        finally:
            await completely(trial.close())  # its consumers first, as for the brokers
            context.destroy(linger=0)


async def completely(clean_up: Coroutine[Any, Any, None]) -> None:
    """Run a clean-up to its end even if this task is cancelled meanwhile (a `finally` that
    is cancelled halfway would leave a queue or a server behind), then let the
    cancellation go on."""
    task = asyncio.ensure_future(clean_up)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


@contextlib.asynccontextmanager
async def private_redis(appendonly: bool) -> AsyncIterator[RedisServer]:
    """A RedisServer killed and its files removed however the run ends, even when it is
    cancelled while the server is still starting (`async with RedisServer()` would not
    stop a server whose start was interrupted). Killed, not stopped: its data goes anyway,
    and Redis ignores a SIGTERM while it writes its first append-only file ("Writing
    initial AOF, can't exit"), so a stop could wait 5 s."""
    server = RedisServer(appendonly)
    try:
        await server.start()
        yield server
    finally:

        async def clean_up() -> None:
            await server.kill()
            if server.workdir:
                shutil.rmtree(server.workdir, ignore_errors=True)

        await completely(clean_up())


@contextlib.asynccontextmanager
async def private_rabbitmq() -> AsyncIterator[RabbitNode]:
    """A RabbitNode started, and stopped with its files removed however the run ends."""
    node = RabbitNode()
    try:
        await node.start()
        yield node
    finally:
        await completely(node.stop())


# ---- the faults ---------------------------------------------------------------------------


async def sigkill(trial: Trial) -> dict:
    """Kill a consumer with SIGKILL at 30% of the run. Work queue: the other worker goes on.
    Fan-out: the subscriber is started again 0.5 s later, on the same queue (AMQP) or from
    the last entry it handled (Streams). AMQP and Streams run both shapes side by side; the
    fan-out result is then under "fanout"."""
    if trial.shape == "fanout":
        return await sigkill_subscriber(trial)
    twin = Trial(trial.fault, trial.transport, "fanout", trial.size, trial.on_event)
    try:
        worker, subscriber = await asyncio.gather(sigkill_worker(trial), sigkill_subscriber(twin))
    finally:
        await completely(twin.close())
    return worker | {"fanout": subscriber}


async def sigkill_worker(trial: Trial) -> dict:
    kill_at = int(trial.size.count * KILL_AT)
    async with producing(trial) as (send, wait_for):
        group = ["--group", "workers"] if trial.transport == "streams" else []
        victim, _ = await asyncio.gather(trial.consumer("w1", *group), trial.consumer("w2", *group))
        await wait_for(2)

        async def kill() -> None:
            victim.kill()

        await trial.produce(send, {kill_at: kill})
        await trial.settle(["w1"], QUIET_S + CLAIM_IDLE_MS / 1000)
    counted = trial.counted("w1")
    detail = {
        "zmq": "PUSH had dealt messages to the killed worker's connection; nothing "
        "redelivers them, so they are lost"
        if counted["lost"]
        else "the killed worker held nothing unread when it died (it kept up); what "
        "PUSH has dealt to a worker that dies is not redelivered",
        "amqp": "the broker redelivered the killed worker's unacknowledged "
        "messages to the other worker: nothing lost",
        "streams": "the other worker claimed the killed worker's pending entries "
        "(XAUTOCLAIM) once idle: nothing lost",
    }[trial.transport]
    return trial.result("w1", f"{detail} ({counted['lost']} lost).", killed_at=kill_at)


async def sigkill_subscriber(trial: Trial) -> dict:
    kill_at = int(trial.size.count * KILL_AT)
    moments: dict[str, int] = {}
    queues = (unique("sigkill.amqp.s1"), unique("sigkill.amqp.s2"))
    queues = queues if trial.transport == "amqp" else ()
    targets = queues or ("", "")
    async with producing(trial, queues=queues) as (send, wait_for):
        victim, _ = await asyncio.gather(
            trial.consumer("s1", target=targets[0]), trial.consumer("s2", target=targets[1])
        )
        await wait_for(2)

        async def kill_and_restart() -> None:
            victim.kill()
            moments["killed_ns"] = time.perf_counter_ns()
            await asyncio.sleep(0.5)
            after = (
                ["--after", trial.cursors.get("s1", "$")] if trial.transport == "streams" else []
            )
            restarted = await trial.consumer("s1", *after, target=targets[0])
            moments["back_ns"] = restarted.ready["t_ns"]  # when it said it was subscribed

        await trial.produce(send, {kill_at: kill_and_restart})
        await trial.settle(["s1", "s2"])
    away = trial.published_between(moments["killed_ns"], moments["back_ns"])
    counted = trial.counted("s1")
    what = {
        "redis": "Pub/Sub keeps nothing for a subscriber that is gone",
        "zmq": "the publisher keeps nothing for a subscriber that is gone",
        "amqp": "its durable queue kept what came while it was gone, and gave again what it "
        "had not acknowledged",
        "streams": "it read on from the last entry it had handled",
    }[trial.transport]
    return trial.result(
        "s1",
        f"{what}: the restarted subscriber lost {counted['lost']}, {away} published "
        "while it was away.",
        published_while_away=away,
        others_lost=trial.counted("s2")["lost"],
    )


async def cut(trial: Trial) -> dict:
    """Cut subscriber s1's connection for 2 s through a proxy (s2 connects directly)."""
    cut_at, down_s = int(trial.size.rate * 1.0), 2.0
    moments: dict[str, int] = {}
    queues = (unique("cut.amqp.s1"), unique("cut.amqp.s2")) if trial.transport == "amqp" else ()
    async with producing(trial, queues=queues) as (send, wait_for):
        if trial.transport == "zmq":
            proxy = Proxy(trial.target)
        else:
            proxy = Proxy(config.AMQP_URL if trial.transport == "amqp" else config.REDIS_URL)
        proxy.port = processes.free_port()  # below the ephemeral range: no outgoing
        # connection can take it while the proxy is cut and its port unbound
        async with proxy:
            env = {"AMQP_URL" if trial.transport == "amqp" else "REDIS_URL": proxy.url}
            targets = queues or ("", "")
            if trial.transport == "zmq":
                cut_off = trial.consumer("s1", target=f"tcp://127.0.0.1:{proxy.port}")
            else:
                cut_off = trial.consumer("s1", env=env, target=targets[0])
            await asyncio.gather(cut_off, trial.consumer("s2", target=targets[1]))
            await wait_for(2)

            async def cut_and_resume() -> None:
                moments["cut_ns"] = time.perf_counter_ns()
                await proxy.cut()
                moments["down_ns"] = time.perf_counter_ns()
                await asyncio.sleep(down_s)
                moments["resume_ns"] = time.perf_counter_ns()
                await proxy.resume()

            await trial.produce(send, {cut_at: cut_and_resume})
            await trial.settle(
                ["s1", "s2"],
                back=lambda: (
                    "resume_ns" in moments and trial.heard_since("s1", moments["resume_ns"])
                ),
            )
    back = [t for t, name, what in trial.notes if name == "s1" and t > moments["resume_ns"]]
    lost = trial.lost_seqs("s1")
    while_cut = trial.published_between(moments["down_ns"], moments["resume_ns"])
    while_away = trial.published_between(
        moments["cut_ns"], back[0] if back else moments["resume_ns"]
    )
    counted = trial.counted("s1")
    what = {
        "redis": "Pub/Sub kept nothing for the subscriber while it was away",
        "zmq": "the publisher dropped the subscriber's messages while it was disconnected",
        "amqp": "the durable queue held the subscriber's messages while it was away",
        "streams": "the reader resumed from its cursor and read what was appended meanwhile",
    }[trial.transport]
    return trial.result(
        "s1",
        f"{what}: {counted['lost']} lost, {while_away} published while it was away.",
        down_s=down_s,
        published_while_cut=while_cut,
        published_while_away=while_away,
        away_s=round(((back[0] if back else moments["resume_ns"]) - moments["cut_ns"]) / 1e9, 2),
        lost_first=lost[0] if lost else None,
        lost_last=lost[-1] if lost else None,
        cut_at=cut_at,
        others_lost=trial.counted("s2")["lost"],
    )


async def restart_redis(trial: Trial, appendonly: bool) -> dict:
    """Restart a private redis-server at half the run; the subscriber reads at half the
    producer's rate, so the broker holds a backlog for it then."""
    restart_at = trial.size.count // 2
    moments: dict[str, Any] = {}
    async with private_redis(appendonly) as server, producing(trial, server.url) as (send, wait):
        env = {"REDIS_URL": server.url}
        # a few entries a read, so the backlog waits in Redis, not in the reader's hands
        args = ["--count", str(RESTART_COUNT)] if trial.transport == "streams" else []
        victim = await trial.consumer(
            "s1", "--work-ms", str(2000 / trial.size.rate), *args, env=env
        )
        await wait(1)
        probe_client = clients.redis(server.url)
        try:

            async def restart() -> None:
                moments["backlog"] = restart_at - trial.delivered("s1")
                if trial.transport == "streams":
                    moments["length_before"] = await probe_client.xlen(trial.target)
                moments["down_ns"] = time.perf_counter_ns()
                await server.restart()
                moments["up_ns"] = time.perf_counter_ns()
                if trial.transport == "streams":
                    moments["length_after"] = await probe_client.xlen(trial.target)

            await trial.produce(send, {restart_at: restart})
            victim.kill(signal.SIGUSR1)  # catch up at full speed
            await trial.settle(["s1"])
        finally:
            await probe_client.aclose()
    counted = trial.counted("s1")
    back = [t for t, name, what in trial.notes if name == "s1" and t > moments["down_ns"]]
    until = back[0] if back else moments["up_ns"]
    kept = "kept" if appendonly else "lost"
    what = (
        f"the stream (and its unread backlog) was {kept} across the restart"
        if trial.transport == "streams"
        else "Pub/Sub stores nothing, with or without the append-only file: what was "
        "published until the subscriber had subscribed again never reached it"
    )
    return trial.result(
        "s1",
        f"{what}; {counted['lost']} lost.",
        appendonly=appendonly,
        backlog_at_restart=moments.get("backlog"),
        down_s=round((moments["up_ns"] - moments["down_ns"]) / 1e9, 2),
        stream_length_before=moments.get("length_before"),
        stream_length_after=moments.get("length_after"),
        published_while_away=trial.published_between(moments["down_ns"], until),
    )


async def restart_rabbitmq(trial: Trial) -> dict:
    """Crash a private RabbitMQ node (SIGKILL) at half the run and start it again; the
    subscriber's durable queue holds a backlog then (it reads at half the producer's rate).
    The producer publishes again what had no confirm when the node died."""
    # aio-pika and aiormq log every failed reconnection, with a traceback: the crash is
    # the point here, and patterns.clients says once that the connection was lost and back
    with clients.quiet("aiormq", "aio_pika"):
        return await crash_rabbitmq(trial)


async def crash_rabbitmq(trial: Trial) -> dict:
    restart_at = trial.size.count // 2
    queue = unique("restart.amqp.s1")
    moments: dict[str, Any] = {}
    async with private_rabbitmq() as node, producing(trial, node.url, (queue,)) as (send, wait):
        victim = await trial.consumer(
            "s1", "--work-ms", str(2000 / trial.size.rate), env={"AMQP_URL": node.url}, target=queue
        )
        await wait(1)

        async def crash_and_start() -> None:
            async with await clients.amqp(node.url) as connection, connection.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                moments["queued"] = declared.declaration_result.message_count
            moments["down_ns"] = time.perf_counter_ns()
            await node.kill()
            moments["start_s"] = await node.start()
            moments["up_ns"] = time.perf_counter_ns()

        await trial.produce(send, {restart_at: crash_and_start})
        victim.kill(signal.SIGUSR1)  # catch up at full speed
        await trial.settle(["s1"], back=lambda: "up_ns" in moments)
    counted = trial.counted("s1")
    back = [t for t, name, _ in trial.notes if name == "s1" and t > moments["down_ns"]]
    return trial.result(
        "s1",
        f"the durable queue and its persistent messages ({moments['queued']:,} waiting) "
        "outlived a SIGKILL of the node; what the subscriber had not acknowledged came "
        f"again ({counted['duplicated']} duplicates), and the producer published again what "
        f"had no confirm, after what it published next ({counted['reordered']} out of order); "
        f"{counted['lost']} lost.",
        backlog_at_restart=moments["queued"],
        down_s=round((moments["up_ns"] - moments["down_ns"]) / 1e9, 2),
        node_start_s=round(moments["start_s"], 2),
        published_while_away=trial.published_between(
            moments["down_ns"], back[0] if back else moments["up_ns"]
        ),
    )


def documented(why: str) -> dict:
    """RabbitMQ's restart where no private node could start: what its documentation says."""
    return {
        "shape": "fanout",
        "sent": 0,
        "delivered": 0,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "measured": False,
        "detail": "documented, not measured: RabbitMQ keeps durable queues and persistent "
        "messages across a restart, and a publisher confirm means the message was written "
        f"to disk; unconfirmed messages may be lost (no private node here: {why})",
        "docs": list(RABBITMQ_DOCS),
    }


AOF_LEFT_OUT = ("shape", "measured", "appendonly", "seconds")  # said once, by the plain run


async def restart(trial: Trial) -> dict:
    if trial.transport == "amqp":
        try:
            return await restart_rabbitmq(trial)
        except NodeUnavailable as error:  # no node of our own can start on this machine
            if trial.sent_ns:  # one had started: a failure of the run, not of the machine
                raise
            return documented(str(error))
    twin = Trial(trial.fault, trial.transport, trial.shape, trial.size, trial.on_event)
    try:
        plain, aof = await asyncio.gather(restart_redis(trial, False), restart_redis(twin, True))
    finally:
        await completely(twin.close())
    return plain | {"aof": {k: v for k, v in aof.items() if k not in AOF_LEFT_OUT}}


async def slow(trial: Trial) -> dict:
    """Subscriber s1 handles a tenth of the producer's rate, s2 keeps up; the broker's
    memory for them is sampled; at the end s1 is sped up to drain what waits for it."""
    work_ms = str(10_000 / trial.size.rate)
    trial.message_size = SLOW_SIZE
    hwm = SLOW_HWM if trial.transport == "zmq" else HWM
    peak: dict[str, int] = {"backlog": 0, "memory": 0}
    queues = (unique("slow.amqp.s1"), unique("slow.amqp.s2")) if trial.transport == "amqp" else ()
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if trial.transport in ("redis", "streams"):  # its memory is this run's alone
            url = (await stack.enter_async_context(private_redis(False))).url
        send, wait_for = await stack.enter_async_context(producing(trial, url, queues, hwm))
        env = {"REDIS_URL": url} if url else None
        targets = queues or ("", "")
        short = ["--hwm", str(hwm), "--small-buffers"] if trial.transport == "zmq" else []
        victim, _ = await asyncio.gather(  # only the slow one has short queues on its side
            trial.consumer("s1", "--work-ms", work_ms, *short, env=env, target=targets[0]),
            trial.consumer("s2", env=env, target=targets[1]),
        )
        await wait_for(2)
        memory = await stack.enter_async_context(sampler(trial, url, queues, peak))
        await trial.produce(send, {})
        backlog_end = trial.size.count - trial.delivered("s1")
        memory.cancel()
        victim.kill(signal.SIGUSR1)
        await trial.settle(["s1", "s2"])
    counted = trial.counted("s1")
    held = peak.get("output_buffer", 0)
    what = {
        "redis": f"Redis held up to {held:,} bytes in the slow subscriber's output buffer"
        if held
        else "the backlog fitted in the slow subscriber's socket buffers: Redis's output "
        "buffer for it stayed empty",
        "zmq": f"the publisher never blocked; past the high-water marks ({hwm} messages a "
        "side, here) the slow subscriber's messages were dropped",
        "amqp": f"the slow subscriber's queue grew in RabbitMQ to {peak.get('queued', 0):,} "
        f"messages, and the producer fell up to {trial.lag_ns / 1e9:.1f} s behind its schedule",
        "streams": "the stream held everything; the slow reader was just further behind",
    }[trial.transport]
    return trial.result(
        "s1",
        f"{what}: {counted['lost']} lost, the other subscriber lost {trial.counted('s2')['lost']}.",
        slow_rate=trial.size.rate / 10,
        message_bytes=trial.message_size,
        backlog_at_end=backlog_end,
        backlog_peak=peak["backlog"],
        broker_memory_growth_bytes=peak["memory"] if trial.transport != "zmq" else None,
        output_buffer_peak_bytes=peak.get("output_buffer"),  # Redis Pub/Sub
        queued_peak=peak.get("queued"),  # AMQP: the slow subscriber's queue
        others_lost=trial.counted("s2")["lost"],
        others_p99_ms=trial.p99_ms("s2"),
    )


@contextlib.asynccontextmanager
async def sampler(
    trial: Trial, redis_url: str | None, queues: tuple[str, ...], peak: dict[str, int]
) -> AsyncIterator[asyncio.Task]:
    """Sample what the broker holds for the slow subscriber every 0.1 s into `peak`."""
    redis = clients.redis(redis_url) if redis_url else None
    connection = await clients.amqp() if queues else None
    base = (await redis.info("memory"))["used_memory"] if redis is not None else 0

    async def sample() -> None:
        while True:
            peak["backlog"] = max(peak["backlog"], len(trial.sent_ns) - trial.delivered("s1"))
            with contextlib.suppress(Exception):  # a sample missed is no failure of the run
                if redis is not None:
                    used = (await redis.info("memory"))["used_memory"]
                    peak["memory"] = max(peak["memory"], used - base)
                    if trial.transport == "redis":  # what waits in the subscribers' buffers
                        clients_ = await redis.client_list(_type="pubsub")
                        held = max((int(c["omem"]) for c in clients_), default=0)
                        peak["output_buffer"] = max(peak.get("output_buffer", 0), held)
                if connection is not None:
                    async with connection.channel() as channel:  # fresh channel, fresh count
                        declared = await channel.declare_queue(queues[0], passive=True)
                        waiting = declared.declaration_result.message_count
                        peak["queued"] = max(peak.get("queued", 0), waiting)
                        peak["memory"] = max(peak["memory"], waiting * trial.message_size)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(sample())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if redis is not None:
            await redis.aclose()
        if connection is not None:
            await connection.close()


RUNS: dict[str, Callable[[Trial], Awaitable[dict]]] = {
    "sigkill": sigkill,
    "cut": cut,
    "restart": restart,
    "slow": slow,
}


async def run_fault(fault: str, transport: str, quick: bool, on_event: OnEvent = log_event) -> dict:
    """Inject `fault` into a run over `transport`; the ledger's count and what happened."""
    if transport not in FAULTS.get(fault, ()):
        raise ValueError(f"no fault {fault!r} on {transport!r}: see FAULTS")
    trial = Trial(fault, transport, shape_of(fault, transport), size(fault, quick), on_event)
    on_event("fault", fault=fault, transport=transport, shape=trial.shape)
    started = time.perf_counter()
    limit_s = trial.size.seconds + RUN_LIMIT_S
    try:
        async with asyncio.timeout(limit_s):
            result = await RUNS[fault](trial)
    except TimeoutError:
        raise RuntimeError(
            f"the {fault} run on {NAMES[transport]} did not finish within {limit_s:g} s "
            "(a broker that stopped answering?)"
        ) from None
    finally:
        await completely(trial.close())
    result["seconds"] = round(time.perf_counter() - started, 1)
    on_event("fault result", fault=fault, transport=transport, **result)
    return result


async def under_faults(quick: bool, on_event: OnEvent = log_event) -> dict:
    """Every fault on every transport it runs on: {fault: {transport: result}}. The
    transports of one fault run side by side (their faults are their own)."""
    results: dict[str, dict[str, dict]] = {}
    for fault, transports in FAULTS.items():
        done = await processes.together(
            *(run_fault(fault, transport, quick, on_event) for transport in transports)
        )
        results[fault] = dict(zip(transports, done, strict=True))
    return results


# ---- command line -------------------------------------------------------------------------


def parser() -> cli.Parser:
    top = cli.Parser(prog="python -m patterns.compare.faults", description=__doc__.split("\n")[0])
    roles = top.roles()
    run = roles.add_parser("run", help="inject faults and print the results as JSON")
    run.add_argument("--fault", choices=tuple(FAULTS), help="one fault (default: all)")
    run.add_argument("--transport", choices=tuple(NAMES), help="one transport (with --fault)")
    run.add_argument("--quick", action="store_true", help="the test suite's small run")
    consumer = roles.add_parser("consume", help="a consumer that reports what it handles")
    consumer.add_argument("--transport", choices=tuple(NAMES), required=True)
    consumer.add_argument("--shape", choices=("fanout", "workqueue"), required=True)
    consumer.add_argument("--name", required=True)
    consumer.add_argument("--target", required=True, help="channel, stream, queue or endpoint")
    consumer.add_argument("--group", default="workers", help="streams work queue: group")
    consumer.add_argument("--after", default="$", help="streams fan-out: read after this id")
    consumer.add_argument(
        "--count", type=int, default=redis_streams.COUNT, help="streams fan-out: entries a read"
    )
    consumer.add_argument("--work-ms", type=float, default=0.0, help="blocking work per message")
    consumer.add_argument("--hwm", type=int, default=HWM, help="zmq: high-water mark")
    consumer.add_argument(
        "--small-buffers", action="store_true", help="zmq: the least kernel buffers"
    )
    for role in (run, consumer):
        cli.add_give_up(role)
    return top


async def run_main(options: argparse.Namespace) -> None:
    if options.fault and options.transport:
        result: dict = await run_fault(options.fault, options.transport, options.quick)
    elif options.fault:
        transports = FAULTS[options.fault]
        done = [await run_fault(options.fault, t, options.quick) for t in transports]
        result = {options.fault: dict(zip(transports, done, strict=True))}
    else:
        result = await under_faults(options.quick)
    print(json.dumps(result, indent=1))


def main() -> None:
    top = parser()
    options = top.parse_args()
    if options.role == "run" and options.transport and not options.fault:
        top.error("--transport needs --fault")
    role = consume if options.role == "consume" else run_main
    cli.run(role(options), options.role, options.give_up_after)


if __name__ == "__main__":
    main()
