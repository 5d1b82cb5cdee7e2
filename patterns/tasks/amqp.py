"""The hashsum cracker over AMQP: competing consumers on one durable queue.

The producer publishes each task, persistent, to the durable queue `tasks_queue` through
the default exchange, and waits for the broker's confirms; the workers consume it, each
holding at most `--prefetch` unacknowledged tasks; a worker acks a task only after it
processed it and the broker confirmed its report (on `results_queue`). The broker deals
each task to one worker and takes it back from a worker that dies before acking: nothing
is lost, and a task may be done twice (its first worker died after reporting it, before
acking it), which is why the collector counts each task once.

    python -m patterns.tasks collector --transport amqp
    python -m patterns.tasks worker --transport amqp --name w1
    python -m patterns.tasks producer --transport amqp --max-length 4 --word node

Choices worth copying:

* The client: pika's asyncio adapter, made awaitable by `patterns.amqpio`. A delivery is
  a plain function call made as the socket is read; aiormq (which the other AMQP modules
  use) hands each delivery from task to task. On empty tasks (all messaging, nothing to
  hash), 6 alternating pairs of runs of 8,000: 117-181 us of CPU per task (median 156)
  against 216-329 us (median 301) with aiormq, and 1.15-1.41 times the tasks/s.
* prefetch 10: a worker holds about ten tasks (tens of milliseconds of hashing). While it
  hashes one, the results of the previous ones wait for their confirms (a persistent
  message is confirmed once on disk) and the next ones are already there, so it is never
  idle waiting for the broker, even when the broker shares its cores and answers late.
  Prefetch 1 leaves it idle for a round trip per task; a large prefetch lets one worker
  hoard what a worker joining later could have done, and a dying worker hands back more
  (notebook 07 sweeps it).
* Reports five to a message (half the prefetch), a line of JSON each, acked together once
  that message is confirmed (`Reports`): the broker stores, confirms and delivers a task's
  own message and a fifth of a report message, not two messages per task. Measured on two
  cores shared with the broker, 6 jobs of 1,236 tasks each way, alternating: two workers
  took 1.67-1.77 s against 1.89-2.07 s with a report per message, and one worker alone
  hashed 3.86-4.07 million words/s against 3.60-3.92 million.
* Bounded retries without broker support: WIRE.md's queues are declared with default
  arguments (the book's samples must declare the same), so they are classic queues, which
  do not count deliveries. A worker that gets a *redelivered* task republishes it with an
  `x-attempts` header one higher and acks the original; past `--max-attempts` the task goes
  to the dead-letter queue (`tasks_queue.dead`) with the reason, instead of killing
  workers forever. A task that cannot be decoded goes there at once: no retry can fix it.
* The producer holds back while more than `--window` tasks wait in the queue, so a huge
  job does not flood the broker; it reconnects and republishes what the broker had not
  confirmed if the connection drops (at least once: the collector counts duplicates).
* The control exchange (`tasks_control`, fanout) carries the collector's notice that the
  word is found: workers skip the rest of that job, the producer stops publishing.
"""

import argparse
import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from patterns import amqpio, config, processes
from patterns.tasks import wire
from patterns.tasks.collect import collect
from patterns.tasks.job import Channels, plan
from patterns.tasks.work import Outcome, Worker

log = logging.getLogger("patterns.tasks.amqp")
PERSISTENT = 2
ATTEMPTS = "x-attempts"
RECONNECT_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # waits between attempts to reach the broker
CHUNK = 100  # tasks published before their confirms are awaited together
WINDOW_CHECK_S = 0.05  # how often a held-back producer looks at the queue's depth again
CLEANUP_S = 1.0  # how long a session cut off from the broker may take to wind down
ACK_IDLE_S = 0.002  # a worker with no delivery for this long acks all it can
ACK_EVERY_S = 0.1  # the collector acks what it recorded at most this often
BROKEN = amqpio.ERRORS


def persistent(**headers: Any) -> amqpio.Properties:
    return amqpio.Properties(delivery_mode=PERSISTENT, headers=headers or None)


async def declare(channel: amqpio.Channel, channels: Channels) -> None:
    """The book's queues (durable, default arguments), our dead letters and control exchange."""
    for queue in (channels.tasks, channels.results, channels.dead):
        await channel.queue_declare(queue, durable=True)
    await channel.exchange_declare(channels.control, exchange_type="fanout")


async def listen(
    channel: amqpio.Channel, exchange: str, on_notice: Callable[[bytes], None]
) -> None:
    """Receive the control exchange's notices on a private queue."""
    declared = await channel.queue_declare(exclusive=True, auto_delete=True)
    await channel.queue_bind(declared.queue, exchange)

    def on_message(message: amqpio.Delivery) -> None:
        try:
            on_notice(message.body)
        except Exception:  # raised inside the client's read, it would cut the connection
            log.exception("a control notice could not be handled: %r", message.body[:60])

    await channel.basic_consume(declared.queue, on_message, no_ack=True)


async def connected(url: str, session: Callable[[amqpio.Connection], Awaitable[bool]]) -> None:
    """Run `session` on a fresh connection until it returns True; reconnect when it breaks."""
    failures = 0
    while True:
        try:
            connection = await amqpio.connect(url)
        except BROKEN as error:
            wait = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            failures += 1
            log.warning("cannot reach %s (%r): again in %g s", config.redacted(url), error, wait)
            await asyncio.sleep(wait)
            continue
        failures = 0
        try:
            if await until_closed(connection, session(connection)):
                return
        except BROKEN as error:
            log.warning("lost the broker (%s): reconnecting", error or type(error).__name__)
            await asyncio.sleep(RECONNECT_S[0])  # a broker that keeps cutting is not hammered
        finally:
            with contextlib.suppress(*BROKEN, asyncio.CancelledError):
                await connection.close()


async def until_closed(connection: amqpio.Connection, awaitable: Awaitable[Any]) -> Any:
    """Await `awaitable`, or raise ConnectionError as soon as the connection closes."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait([task, connection.closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CLEANUP_S)  # its `finally`, but not forever
    if not task.done() or task.cancelled():
        raise ConnectionError("the connection closed")
    return task.result()


CUT = "the broker cancelled the consumer (was its queue deleted?) or closed the channel"


class Deliveries:
    """One consumer's deliveries, in order, for the one loop that takes them: `waiting`
    holds what came (None once the connection or the channel closes, or the broker cancels
    the consumer), and `next` waits, for a while or for ever, until something is there.

    An asyncio.Queue with asyncio.timeout does the same for more: a worker on empty tasks
    runs out of deliveries about 4 tasks in 10 and waits for the next; with this in their
    place its CPU per task went from 132 to 120 us (median of 12 alternating pairs of runs
    of 8,000 empty tasks) and its tasks/s up 1.5%.
    """

    def __init__(self) -> None:
        self.waiting: deque[amqpio.Delivery | None] = deque()
        self._waiter: asyncio.Future[bool] | None = None

    def on_message(self, message: amqpio.Delivery) -> None:
        self.waiting.append(message)
        self._wake(True)

    def cut(self, _: object = None) -> None:
        self.waiting.append(None)
        self._wake(True)

    def _wake(self, came: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(came)

    async def next(self, within: float | None = None) -> bool:
        """Wait until something is waiting (True), or `within` seconds have passed (False)."""
        if self.waiting:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = None if within is None else loop.call_later(within, self._wake, False)
        try:
            return await self._waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None


async def consume(channel: amqpio.Channel, queue: str) -> Deliveries:
    """Consume `queue` into `Deliveries` of this channel's own, which get None once the
    channel closes (the connection's close closes it too), or the broker cancels the
    consumer.

    The last two leave the connection open, so a consumer waiting for its next delivery
    would wait for ever; woken with None, it starts again on a new connection instead
    (declaring the queue anew; what it held unacked is delivered again). Each channel's
    deliveries are its own: a late delivery or None of an earlier channel reaches nobody.
    """
    deliveries = Deliveries()
    channel.closing.add_done_callback(deliveries.cut)
    channel.on_cancel(deliveries.cut)
    await channel.basic_consume(queue, deliveries.on_message)
    return deliveries


# ---- producer ---------------------------------------------------------------------------


async def producer(options: argparse.Namespace) -> None:
    job, tasks = plan(options.hash, options.max_length, options.alphabet, options.batch_size)
    bodies = (wire.encode_task(task) for task in tasks)
    chunk: list[bytes] = []  # published, not yet confirmed: published again after a reconnect
    sent = 0
    announced = False
    cracked = asyncio.Event()
    processes.report("ready", job=job.job, tasks=job.tasks)

    def on_notice(data: bytes) -> None:
        if wire.cracks(data, job.searchHash):
            cracked.set()

    async def session(connection: amqpio.Connection) -> bool:
        nonlocal sent, announced, chunk
        channel = await connection.channel()  # publisher confirms are on
        await declare(channel, options)
        await listen(channel, options.control, on_notice)
        if not announced:
            await channel.basic_publish(
                wire.encode(job), routing_key=options.results, properties=persistent()
            )
            announced = True
        while not cracked.is_set():
            chunk = chunk or list(itertools.islice(bodies, min(CHUNK, options.window)))
            if not chunk:
                break
            depth = (await channel.queue_declare(options.tasks, passive=True)).message_count
            if depth is not None and depth >= options.window:
                await asyncio.sleep(WINDOW_CHECK_S)
                continue
            confirms = [
                channel.basic_publish(body, routing_key=options.tasks, properties=persistent())
                for body in chunk
            ]
            if not all(await asyncio.gather(*confirms)):
                raise ConnectionError("the broker refused a task (nack)")
            sent, chunk = sent + len(chunk), []
        if cracked.is_set():
            log.info("the word is found: stopping after %d of %d tasks", sent, job.tasks)
        await channel.basic_publish(
            wire.encode(wire.Sent(job.job, sent)),
            routing_key=options.results,
            properties=persistent(),
        )
        return True

    await connected(config.AMQP_URL, session)
    log.info("sent %d tasks of job %s", sent, job.job)
    processes.report("result", job=job.job, sent=sent)


# ---- worker -----------------------------------------------------------------------------


def attempts_of(message: amqpio.Delivery) -> int:
    """Which delivery of this task this is: counted in a header, as classic queues do not."""
    headers = message.headers or {}
    counted = headers.get(ATTEMPTS, 1)
    counted = counted if isinstance(counted, int) else 1
    return counted + 1 if message.redelivered else counted


class Acks:
    """A channel's task acks, in delivery order, several per frame (`multiple=True`).

    A task may be acked once the broker confirmed what it produced. Rather than one ack
    frame per task, the worker acks `every` settled tasks at once, or all it can once no
    delivery came for `ACK_IDLE_S` (a worker that is done, or waits for the producer).
    With prefetch 10 that is an ack every 5 tasks: fewer frames for worker and broker,
    and the broker still has the next tasks in flight. Acking as soon as the worker's
    queue of deliveries is empty can be an ack frame per task whenever the worker outpaces
    the broker's deliveries, which small tasks do (empty tasks: 2,555-2,650/s acking at
    once, 2,674-2,928/s waiting 2 ms, 4 rounds). The price: a worker that dies holds a
    few settled tasks unacked, which are done again (the collector counts them once), as
    with an ack lost in flight.
    """

    def __init__(self, channel: amqpio.Channel, every: int) -> None:
        self.channel = channel
        self.every = every
        self.taken: deque[int] = deque()  # delivery tags not acked yet, in delivery order
        self.settled: dict[int, bool] = {}  # tag -> ack (True) or requeue (False)
        self.idle = False  # the worker waits for a delivery: ack what can be acked now

    def take(self, tag: int) -> None:
        self.taken.append(tag)

    def settle(self, tags: list[int], ok: bool) -> None:
        """These tasks are done with: ack (ok) or requeue them, with the next frame."""
        for tag in tags:
            self.settled[tag] = ok
        if self.idle or len(self.settled) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Ack every settled task that no unsettled one precedes; requeue the refused.
        (Acks are written at once, never awaited: frames go out in tag order.)"""
        upto = None
        while self.taken and self.taken[0] in self.settled:
            tag = self.taken.popleft()
            if self.settled.pop(tag):
                upto = tag
                continue
            if upto is not None:  # a multiple ack must not cover the one requeued
                self.channel.basic_ack(upto, multiple=True)
                upto = None
            self.channel.basic_nack(tag, requeue=True)
        if upto is not None:
            self.channel.basic_ack(upto, multiple=True)


class Settlement:
    """Tasks whose messages (reports, a dead letter, a requeued copy) await their confirms:
    acked once the broker confirmed every one, requeued if it refused one.

    It is each publish's `on_confirm`, called as the confirm is read: no task per report
    waits for it, and a redelivered task's copy does not hold up the worker. If the channel
    closes first, the tasks stay unacked and the broker delivers them again.
    """

    def __init__(self, acks: Acks, tags: list[int], messages: int) -> None:
        self.acks = acks
        self.tags = tags
        self.waiting = messages
        self.ok = True

    def __call__(self, ok: bool) -> None:
        self.ok = self.ok and ok
        self.waiting -= 1
        if self.waiting:
            return
        if not self.ok:
            log.warning("the broker refused a result: its tasks go back to the queue")
        self.acks.settle(self.tags, self.ok)


Message = tuple[str, bytes, amqpio.Properties]  # queue (by the default exchange), body, properties


class Reports:
    """The reports of a worker's finished tasks, published together: one message, one line
    of JSON per report (`wire.join`), for every `every` tasks.

    A report per message would be two persistent messages per task for the broker to store,
    confirm, deliver and have acked (the task and its report), and a publish and a confirm
    per task for the worker. Together with the acks, which go `every` at a time anyway, a
    task costs the broker its own message and a fraction of one report message. A task is
    still acked only once the message holding its report is confirmed (and its dead letter,
    if it has one); a worker that dies first leaves it unacked, to be done again. What
    cannot wait goes at once: a found word (the book's `Found: <word>`, then the reports
    so far), a dead letter, and whatever is there when the worker runs out of deliveries.
    """

    def __init__(self, acks: Acks, queue: str, every: int) -> None:
        self.acks = acks
        self.queue = queue
        self.every = every
        self.tags: list[int] = []
        self.lines: list[bytes] = []
        self.others: list[Message] = []  # messages that go alone, in order

    def add(self, tag: int, outcome: Outcome, others: list[Message]) -> bool:
        """Take a finished task's reports, and `others` it must publish (its dead letter);
        True if they must go now: `every` tasks are here, or a word is found, or a task is
        dead."""
        self.tags.append(tag)
        self.others += others
        for frame in outcome.results:
            if frame.startswith(wire.FOUND_PREFIX.encode()):  # the book's result: alone
                self.others.append((self.queue, frame, persistent()))
            else:
                self.lines.append(frame)
        return len(self.tags) >= self.every or bool(self.others)

    def send(self) -> None:
        """Publish what is here, to be acked once confirmed."""
        if not self.tags:
            return
        messages = self.others
        if self.lines:
            messages.append((self.queue, wire.join(self.lines), persistent()))
        publish(self.acks, self.tags, messages)
        self.tags, self.lines, self.others = [], [], []


def publish(acks: Acks, tags: list[int], messages: list[Message]) -> None:
    """Publish `messages`, in order; settle the tasks `tags` once all are confirmed."""
    settlement = Settlement(acks, tags, len(messages))
    for queue, body, properties in messages:
        acks.channel.basic_publish(
            body, routing_key=queue, properties=properties, on_confirm=settlement
        )


async def handle(
    work: Worker,
    reports: Reports,
    message: amqpio.Delivery,
    options: argparse.Namespace,
) -> None:
    """Process one delivery; its ack waits for the confirms of what it publishes (a
    `Settlement`).

    Persistent messages are confirmed once on disk, which takes milliseconds here: the
    worker hashes its next task meanwhile (its prefetch lets the broker deliver it).
    """
    acks = reports.acks
    attempts = attempts_of(message)
    tag = message.delivery_tag
    acks.take(tag)
    if message.redelivered and attempts <= work.max_attempts:
        # count this delivery in a copy, then drop the original
        log.info("task redelivered (attempt %d): requeued with its count", attempts)
        copy = persistent(**{ATTEMPTS: attempts})
        publish(acks, [tag], [(options.tasks, message.body, copy)])
        return
    outcome = await work.process(message.body, attempts)
    dead_letter = []
    if outcome.dead is not None:
        letter = persistent(
            **{"x-reason": outcome.dead.reason, "x-worker": work.name, ATTEMPTS: attempts}
        )
        dead_letter.append((options.dead, message.body, letter))
    if reports.add(tag, outcome, dead_letter):
        reports.send()


async def worker(options: argparse.Namespace) -> None:
    work = Worker(options.name, options.max_attempts)
    ready = False

    async def session(connection: amqpio.Connection) -> bool:
        nonlocal ready
        channel = await connection.channel()
        await declare(channel, options)
        await listen(channel, options.control, work.learn)
        await channel.basic_qos(prefetch_count=options.prefetch)
        deliveries = await consume(channel, options.tasks)
        if not ready:
            processes.report("ready", name=options.name)
            ready = True
        log.info("%s consumes %s, prefetch %d", options.name, options.tasks, options.prefetch)
        every = max(1, options.prefetch // 2)
        acks = Acks(channel, every)
        reports = Reports(acks, options.results, every)
        while work.tally.tasks != options.exit_after:
            if not await deliveries.next(ACK_IDLE_S):  # ran out: report and ack what it can
                reports.send()
                acks.idle = True
                acks.flush()
                await deliveries.next()
            message = deliveries.waiting.popleft()
            if message is None:
                raise ConnectionError(CUT)
            acks.idle = False
            await handle(work, reports, message, options)
            # a turn of the loop between tasks: what this one published and acked goes out
            # now, not once every delivery waiting here is done (empty tasks/s 1.13 times
            # as many, median of 6 alternating rounds; a real task turns it as it hashes)
            await asyncio.sleep(0)
        reports.send()
        await channel.wait_for_confirms()  # done: every finished task is acked before leaving
        acks.flush()
        return True

    await connected(config.AMQP_URL, session)
    processes.report("result", name=options.name, **work.tally.as_dict())


# ---- collector --------------------------------------------------------------------------


async def results(
    options: argparse.Namespace, publisher: list[amqpio.Channel]
) -> AsyncIterator[list[bytes]]:
    """Batches of results, acked (multiple) once recorded, at most every `ACK_EVERY_S`.

    The first batch is empty: it is yielded as soon as the collector consumes, so the
    collector can say it is ready. Results trickle in one per task, so acking each batch
    would be a frame per result; the collector acks what it recorded in one frame every
    so often instead, and all of it when it is done. After a reconnect, what was not
    acked comes again (the collector counts each task once).
    """
    failures = 0
    while True:
        try:
            connection = await amqpio.connect(config.AMQP_URL)
        except BROKEN as error:
            wait = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            failures += 1
            log.warning("cannot reach the broker (%r): again in %g s", error, wait)
            await asyncio.sleep(wait)
            continue
        failures = 0
        try:
            channel = await connection.channel()
            await declare(channel, options)
            await channel.basic_qos(prefetch_count=1_000)
            deliveries = await consume(channel, options.results)
            waiting = deliveries.waiting
            publisher[:] = [channel]
            yield []
            acked_at = time.monotonic()
            while True:
                await deliveries.next()
                batch = [waiting.popleft() for _ in range(min(len(waiting), 1_000))]
                if None in batch:
                    raise ConnectionError(CUT if connection.is_open else "the connection closed")
                last = batch[-1].delivery_tag
                try:
                    yield [message.body for message in batch]
                except GeneratorExit:  # the collector is done: ack all it recorded
                    with contextlib.suppress(*BROKEN):
                        channel.basic_ack(last, multiple=True)  # written before the close
                    raise
                if time.monotonic() - acked_at >= ACK_EVERY_S:  # recorded: ack them all
                    channel.basic_ack(last, multiple=True)
                    acked_at = time.monotonic()
        except BROKEN as error:
            log.warning("lost the broker (%s): reconnecting", error or type(error).__name__)
            await asyncio.sleep(RECONNECT_S[0])  # a broker that keeps cutting is not hammered
        finally:
            with contextlib.suppress(*BROKEN, asyncio.CancelledError):
                await connection.close()


async def collector(options: argparse.Namespace) -> None:
    publisher: list[amqpio.Channel] = []
    batches = results(options, publisher)
    try:
        await anext(batches)  # consuming
        processes.report("ready", results=options.results)

        async def broadcast(notice: wire.Cracked) -> None:
            with contextlib.suppress(*BROKEN):
                await publisher[0].basic_publish(wire.encode(notice), exchange=options.control)

        result = await collect(
            batches, broadcast, processes.report, options.idle_timeout, options.interval
        )
    finally:
        await batches.aclose()
    processes.report("result", **result)


async def delete(channels: Channels) -> None:
    """Delete a run's queues and control exchange (never the book's: only unique names)."""
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        for queue in (channels.tasks, channels.results, channels.dead):
            await channel.queue_delete(queue)
        await channel.exchange_delete(channels.control)
    finally:
        await connection.close()


async def publish_raw(channels: Channels, bodies: list[bytes]) -> None:
    """Put bodies on the task queue as they are: how a test or a notebook adds a poison task."""
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        await declare(channel, channels)
        confirms = [
            channel.basic_publish(body, routing_key=channels.tasks, properties=persistent())
            for body in bodies
        ]
        if not all(await asyncio.gather(*confirms)):
            raise ConnectionError("the broker refused a task (nack)")
    finally:
        await connection.close()


async def dead_letters(channels: Channels) -> list[dict[str, Any]]:
    """Take every message off the dead-letter queue: the task, why, who, after how many tries."""
    connection = await amqpio.connect(config.AMQP_URL)
    letters = []
    try:
        channel = await connection.channel()
        while True:
            message = await channel.basic_get(channels.dead, no_ack=True)
            if message is None:
                return letters
            headers = message.headers or {}
            letters.append(
                {
                    "task": message.body.decode(errors="replace"),
                    "reason": headers.get("x-reason"),
                    "worker": headers.get("x-worker"),
                    "attempts": headers.get(ATTEMPTS),
                }
            )
    finally:
        await connection.close()
