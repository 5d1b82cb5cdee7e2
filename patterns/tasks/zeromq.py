"""The hashsum cracker over a ZeroMQ pipeline: ventilator PUSH -> workers PULL/PUSH -> sink PULL.

No broker: the producer (the ventilator) binds a PUSH socket and deals tasks round-robin
to the workers connected to it; each worker pushes its reports to the collector (the
sink), which binds a PULL socket. The collector also binds a PUB socket on which it
announces a found word, so workers skip the rest of that job and the producer stops.

    python -m patterns.tasks collector --transport zmq
    python -m patterns.tasks worker --transport zmq          # one per core, any machine
    python -m patterns.tasks producer --transport zmq --workers 2 --max-length 4 --word node

How it fails, by design: PUSH hands a task to a worker's connection and forgets it. A
worker killed mid-job takes every task queued to it (in its socket buffers, not only the
one it was hashing) with it; nothing redelivers them, and only the sink's count shows the
hole. And PUSH deals to whoever is connected *now*: the producer waits until `--workers`
workers have completed their handshake (a socket monitor counts them) before the first
task, or the first worker would get them all.

Short queues (`--hwm`, on the producer and the workers; 1 by default). With ZeroMQ's
defaults, as in the book, PUSH queues up to 1,000 tasks to each worker, plus what the
kernel's socket buffers hold: a whole job is dealt out at once, half to each of two
workers, and the job lasts as long as the slower one takes for its half. With a
high-water mark of 1 and the smallest socket buffers the kernel allows, a worker's
connection holds about 33 tasks of some 160 bytes, in ZeroMQ's buffers and the kernel's;
PUSH skips a worker whose queue is full, so the tasks go to the workers with room, at
their pace, and a killed worker takes only what it held. On this machine's two cores,
the job of 1,236 tasks with two workers: 4.74-5.66 s (median 4.84) against 4.79-6.38 s
(median 5.55) with the defaults, 5 alternating pairs, with 4 KiB buffers; the smallest
buffers then cut what a connection holds from 87 tasks to 33 and the time the first
worker to finish waits for the other from 0.13-0.42 s (median 0.169) to 0.005-0.096 s
(median 0.022), 5 alternating pairs, at a price paid in messaging: empty tasks/s 18%
fewer, and the raw loop's alike (medians of 6 alternating rounds, with a round-to-round
noise larger than that). `--hwm 0` keeps ZeroMQ's and the kernel's defaults: the book's
behaviour, which notebook 06 shows.
"""

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from patterns import processes
from patterns.tasks import wire
from patterns.tasks.collect import collect
from patterns.tasks.job import plan
from patterns.tasks.work import Worker

log = logging.getLogger("patterns.tasks.zmq")
RESULTS_LINGER_MS = 5_000  # how long a closing socket may spend delivering what it queued
HWM = 1  # --hwm's default: tasks queued per worker connection
# with --hwm: the kernel's buffers of a task connection, each way; Linux raises a request
# for 1 byte to its smallest, 4,608 bytes to send and 2,304 to receive
QUEUE_BUFFER_BYTES = 1
# A look at the control socket that finds nothing costs about 4 us (pyzmq raises
# zmq.Again), a tenth of all an empty task costs: a worker looks before a task only if it
# has not looked for this long. A found word is rare, and a task takes a few ms anyway.
NOTICES_EVERY_S = 0.005


def drain(socket: zmq.Socket, at_most: int = 1_000) -> list[bytes]:
    """The messages ready on `socket` (up to `at_most`), without waiting.

    Pass a synchronous socket (`zmq.Socket.shadow(s.underlying)` of an asyncio one): the
    asyncio socket's recv returns a future even with NOBLOCK, and one await per message is
    what makes a receiver slow.
    """
    frames: list[bytes] = []
    with contextlib.suppress(zmq.Again):
        while len(frames) < at_most:
            frames.append(socket.recv(zmq.NOBLOCK))
    return frames


def shadow(socket: zmq.asyncio.Socket) -> zmq.Socket:
    return zmq.Socket.shadow(socket.underlying)


class Ready:
    """Wait until a socket can be read or written, with one reader kept on its descriptor.

    `await socket.poll()` (or a send or receive that has to wait) on a `zmq.asyncio`
    socket adds a reader to the event loop for that one wait and removes it after: here,
    with a wait per message, 445-575 us of CPU per message received, against 195-260 us
    with a reader kept for the socket's life (and 130-140 us for a blocking receive with
    no event loop), 5 alternating rounds of 600 messages 4 ms apart. In a two-worker job
    of 1,236 tasks the collector's CPU went from 0.61-0.75 s to 0.52-0.57 s, and the
    producer's (which waits for room before most tasks) from 0.24-0.30 s to 0.16-0.18 s,
    4 alternating pairs.

    Pass a synchronous socket (`shadow`); nothing else may wait on its descriptor
    meanwhile, and close this (or leave its `with` block) before the socket is closed.

    The descriptor signals edges, not levels: it says "look again", and reading the
    socket's `EVENTS` is what takes the signal (and what brings the socket's state up to
    date), so each wake reads them even when no one waits.
    """

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._loop.add_reader(socket.FD, self._wake)

    def _wake(self) -> None:
        events = self.socket.get(zmq.EVENTS)
        if self._waiter is not None and events & self._wanted and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, event: int) -> None:
        """Until `event` (zmq.POLLIN or zmq.POLLOUT) is ready on the socket."""
        while not self.socket.get(zmq.EVENTS) & event:
            self._waiter, self._wanted = self._loop.create_future(), event
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._loop.remove_reader(self.socket.FD)

    def __enter__(self) -> "Ready":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


async def receive(socket: zmq.asyncio.Socket, twin: zmq.Socket) -> bytes:
    """The next message on `socket`: taken through its synchronous `twin` (`shadow`) if one
    is there, awaited only if none is (an asyncio receive costs a future each time)."""
    try:
        return twin.recv(zmq.NOBLOCK)
    except zmq.Again:
        return await socket.recv()


async def wait_for_workers(monitor: zmq.asyncio.Socket, count: int) -> None:
    """Until `count` peers have completed their ZeroMQ handshake with the monitored socket."""
    connected = 0
    while connected < count:
        event = parse_monitor_message(await monitor.recv_multipart())["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            connected += 1
        elif event == zmq.EVENT_DISCONNECTED:
            connected -= 1
        log.info("%d of %d workers connected", connected, count)


def bound(socket: zmq.Socket, hwm: int) -> None:
    """Limit what a task connection queues, on the side it moves tasks (a PUSH sends, a
    PULL receives): `hwm` tasks in ZeroMQ's queue and small kernel buffers. 0: ZeroMQ's
    and the kernel's defaults."""
    if not hwm:
        return
    if socket.socket_type == zmq.PUSH:
        socket.sndhwm, socket.sndbuf = hwm, QUEUE_BUFFER_BYTES
    else:
        socket.rcvhwm, socket.rcvbuf = hwm, QUEUE_BUFFER_BYTES


def sink_and_control(
    context: zmq.asyncio.Context, options: argparse.Namespace
) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
    """The producer's and the workers' two connections to the collector: a PUSH for what
    they report, a SUB for its notices (the word is found)."""
    to_sink = context.socket(zmq.PUSH)
    to_sink.linger = RESULTS_LINGER_MS
    to_sink.connect(options.results)
    control = context.socket(zmq.SUB)
    control.subscribe(b"")
    control.connect(options.control)
    return to_sink, control


async def producer(options: argparse.Namespace) -> None:
    job, tasks = plan(options.hash, options.max_length, options.alphabet, options.batch_size)
    context = zmq.asyncio.Context()
    try:
        ventilator = context.socket(zmq.PUSH)
        ventilator.linger = -1  # close() waits until every task is handed to a worker
        bound(ventilator, options.hwm)  # before bind: its connections inherit it
        monitor = ventilator.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        ventilator.bind(options.tasks)
        to_sink, control = sink_and_control(context, options)
        notices = shadow(control)
        endpoint = ventilator.getsockopt_string(zmq.LAST_ENDPOINT)
        processes.report("ready", endpoint=endpoint, job=job.job, tasks=job.tasks)
        await wait_for_workers(monitor, options.workers)
        await to_sink.send(wire.encode(job))
        sent = 0
        with Ready(shadow(ventilator)) as room:
            for task in tasks:
                if any(wire.cracks(notice, job.searchHash) for notice in drain(notices)):
                    log.info("the word is found: stopping after %d of %d tasks", sent, job.tasks)
                    break
                await room.wait(zmq.POLLOUT)  # while every worker's queue is full
                room.socket.send(wire.encode_task(task), zmq.NOBLOCK)
                sent += 1
        await to_sink.send(wire.encode(wire.Sent(job.job, sent)))
        log.info("sent %d tasks of job %s", sent, job.job)
        processes.report("result", job=job.job, sent=sent)
        context.destroy(linger=None)  # each socket's own: every task reaches a worker
    finally:
        context.destroy(linger=0)  # stopped before the end: drop what was not handed over


async def worker(options: argparse.Namespace) -> None:
    work = Worker(options.name, options.max_attempts)
    context = zmq.asyncio.Context()
    try:
        from_ventilator = context.socket(zmq.PULL)
        bound(from_ventilator, options.hwm)
        from_ventilator.connect(options.tasks)
        to_sink, control = sink_and_control(context, options)
        tasks, notices = shadow(from_ventilator), shadow(control)
        processes.report("ready", name=options.name)
        log.info("%s takes tasks from %s", options.name, options.tasks)
        look_at = 0.0  # when to look for notices next
        while work.tally.tasks != options.exit_after:
            # one task at a time: the rest wait in the socket, where a notice can still
            # reach them before they are hashed; wait only when there is none
            task = await receive(from_ventilator, tasks)
            if time.monotonic() >= look_at:
                for notice in drain(notices):
                    work.learn(notice)
                look_at = time.monotonic() + NOTICES_EVERY_S
            outcome = await work.process(task)
            for frame in outcome.results:
                await to_sink.send(frame)
        processes.report("result", name=options.name, **work.tally.as_dict())
    finally:
        context.destroy(linger=None)


async def frames(sink: Ready) -> AsyncIterator[list[bytes]]:
    while True:
        await sink.wait(zmq.POLLIN)
        yield drain(sink.socket)


async def collector(options: argparse.Namespace) -> None:
    context = zmq.asyncio.Context()
    try:
        sink = context.socket(zmq.PULL)
        sink.bind(options.results)
        announcer = context.socket(zmq.PUB)
        announcer.bind(options.control)
        processes.report(
            "ready",
            results=sink.getsockopt_string(zmq.LAST_ENDPOINT),
            control=announcer.getsockopt_string(zmq.LAST_ENDPOINT),
        )

        async def broadcast(notice: wire.Cracked) -> None:
            await announcer.send(wire.encode(notice))

        with Ready(shadow(sink)) as reports:
            result = await collect(
                frames(reports), broadcast, processes.report, options.idle_timeout, options.interval
            )
        processes.report("result", **result)
    finally:
        context.destroy(linger=0)
