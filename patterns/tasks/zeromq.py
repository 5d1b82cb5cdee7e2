"""The hashsum cracker over a ZeroMQ pipeline: ventilator PUSH -> workers PULL/PUSH -> sink PULL.

No broker. The producer (the ventilator) binds a PUSH socket and deals the tasks
round-robin to the workers connected to it; each worker pushes the book's `Found: <word>`
to the collector's (the sink's) results endpoint, and its reports to the sink's reports
endpoint: one PULL socket bound to both. The collector also binds a PUB socket on which
it announces a found word, so workers skip the rest of the job and the producer stops.

    python -m patterns.tasks collector --transport zmq
    python -m patterns.tasks worker --transport zmq          # one per core, any machine
    python -m patterns.tasks producer --transport zmq --workers 2 --max-length 4 --word node

How it fails, by design: PUSH hands a task to a worker's connection and forgets it. A
worker killed mid-job takes every task queued to it with it (in its socket buffers, not
only the one it was hashing); nothing redelivers them, and only the collector's count
shows the hole. And PUSH deals to whoever is connected *now*: the producer waits until
`workers` workers have completed their handshake (a socket monitor counts them) before
the first task, or the first worker to connect would get them all.

Short queues (`hwm`, on the producer and the workers; 1 by default): with ZeroMQ's
defaults, as in the book, PUSH queues up to 1,000 tasks to each worker, plus what the
kernel's socket buffers hold, so a whole job is dealt out at once, half to each of two
workers, and a killed worker takes half the job with it. With a high-water mark of 1 and
the smallest socket buffers the kernel allows, a worker's connection holds a few dozen
tasks; PUSH skips a worker whose queue is full, so tasks go to the workers with room, at
their pace. `hwm=0` keeps ZeroMQ's and the kernel's defaults: the book's behaviour.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from patterns.events import OnEvent, log_event
from patterns.tasks import wire
from patterns.tasks.collect import IDLE_S, INTERVAL_S, Collector
from patterns.tasks.job import Channels
from patterns.tasks.work import Worker

log = logging.getLogger("patterns.tasks.zmq")
HWM = 1  # tasks queued per worker connection (0: ZeroMQ's default of 1,000)
LINGER_MS = 5_000  # how long a closing socket may spend delivering what it queued


def bound(socket: zmq.asyncio.Socket, hwm: int) -> None:
    """Short queues on a task connection: `hwm` tasks, and the smallest kernel buffers
    (Linux raises a request for 1 byte to its minimum). 0: the defaults."""
    if hwm and socket.socket_type == zmq.PUSH:
        socket.sndhwm, socket.sndbuf = hwm, 1
    elif hwm:
        socket.rcvhwm, socket.rcvbuf = hwm, 1


@contextlib.asynccontextmanager
async def listening(
    control: zmq.asyncio.Socket, on_notice: Callable[[bytes], object]
) -> AsyncIterator[None]:
    """Hear the collector's notices while the block runs."""

    async def listen() -> None:
        while True:
            on_notice(await control.recv())

    hearing = asyncio.create_task(listen())
    try:
        yield
    finally:
        hearing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hearing


def connected(context: zmq.asyncio.Context, kind: int, endpoint: str) -> zmq.asyncio.Socket:
    """A PUSH that may take `LINGER_MS` to deliver what it queued when closed, or a SUB."""
    socket = context.socket(kind)
    socket.linger = LINGER_MS if kind == zmq.PUSH else 0
    if kind == zmq.SUB:
        socket.subscribe(b"")
    socket.connect(endpoint)
    return socket


async def wait_for_workers(monitor: zmq.asyncio.Socket, count: int) -> None:
    """Until `count` peers have completed their ZeroMQ handshake with the monitored socket."""
    connected = 0
    while connected < count:
        event = (await recv_monitor_message(monitor))["event"]
        connected += {zmq.EVENT_HANDSHAKE_SUCCEEDED: 1, zmq.EVENT_DISCONNECTED: -1}.get(event, 0)
        log.info("%d of %d workers connected", connected, count)


async def producer(
    channels: Channels,
    job: wire.Job,
    tasks: Iterable[wire.Task],
    *,
    workers: int = 1,
    hwm: int = HWM,
    on_event: OnEvent = log_event,
) -> int:
    """Deal the tasks to `workers` workers (once they are connected); how many were sent."""
    context = zmq.asyncio.Context()
    cracked = asyncio.Event()
    try:
        ventilator = context.socket(zmq.PUSH)
        bound(ventilator, hwm)  # before bind: its connections inherit it
        monitor = ventilator.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        ventilator.bind(channels.tasks)
        reports = connected(context, zmq.PUSH, channels.reports)
        notices = connected(context, zmq.SUB, channels.control)
        endpoint = ventilator.getsockopt_string(zmq.LAST_ENDPOINT)
        on_event("ready", endpoint=endpoint, job=job.job, tasks=job.tasks)
        await wait_for_workers(monitor, workers)
        await reports.send(wire.encode(job))
        sent = 0
        async with listening(notices, lambda n: wire.cracks(n, job.searchHash) and cracked.set()):
            for task in tasks:
                if cracked.is_set():
                    break
                await ventilator.send(wire.encode_task(task))  # waits while every queue is full
                sent += 1
        await reports.send(wire.encode(wire.Sent(job.job, sent)))
        ventilator.close(linger=-1)  # every task it sent reaches a worker before it exits
        on_event("result", job=job.job, sent=sent)
        return sent
    finally:
        context.destroy(linger=0)  # stopped before the end: drop what was not handed over


async def worker(
    channels: Channels,
    work: Worker,
    *,
    hwm: int = HWM,
    exit_after: int | None = None,
    on_event: OnEvent = log_event,
) -> None:
    """Take a task, hash it, push what it produced; until told to stop."""
    context = zmq.asyncio.Context()
    try:
        tasks = context.socket(zmq.PULL)
        tasks.linger = 0
        bound(tasks, hwm)
        tasks.connect(channels.tasks)
        results = connected(context, zmq.PUSH, channels.results)
        reports = connected(context, zmq.PUSH, channels.reports)
        control = connected(context, zmq.SUB, channels.control)
        on_event("ready", name=work.name)
        async with listening(control, work.learn):
            while work.tally.tasks + work.tally.dead != exit_after:
                outcome = await work.process(await tasks.recv())
                if outcome.result is not None:
                    await results.send(outcome.result)  # the book's `Found: <word>`
                await reports.send(outcome.report)
        on_event("result", name=work.name, **work.tally.as_dict())
    finally:
        context.destroy(linger=None)  # each socket's own: what was pushed reaches the sink


async def collector(
    channels: Channels,
    *,
    idle_timeout: float = IDLE_S,
    interval: float = INTERVAL_S,
    on_event: OnEvent = log_event,
) -> dict:
    """Bind the sink (results and reports) and the control PUB; record until accounted for."""
    context = zmq.asyncio.Context()
    collected = Collector(on_event)
    try:
        sink = context.socket(zmq.PULL)
        bound_to = {}
        for name in ("results", "reports"):  # one socket, two endpoints
            sink.bind(getattr(channels, name))
            bound_to[name] = sink.getsockopt_string(zmq.LAST_ENDPOINT)
        announcer = context.socket(zmq.PUB)
        announcer.bind(channels.control)
        on_event("ready", control=announcer.getsockopt_string(zmq.LAST_ENDPOINT), **bound_to)

        async def receive() -> None:
            while True:
                if (notice := collected.take(await sink.recv())) is not None:
                    await announcer.send(wire.encode(notice))

        receiving = asyncio.create_task(receive())
        await collected.wait(idle_timeout, interval)
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        return collected.result()
    finally:
        context.destroy(linger=0)
