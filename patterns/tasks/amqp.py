"""The hashsum cracker over AMQP (aio-pika): competing consumers on one durable queue.

The producer publishes each task, persistent, to the durable queue `tasks_queue` through
the default exchange, and the broker confirms each. The workers consume the queue, each
holding at most `prefetch` unacknowledged tasks; the broker deals each task to one of
them. A worker acks a task only once the broker has confirmed what the task produced
(its report, and the book's `Found: <word>`), so a worker that dies first leaves the task
unacked and the broker delivers it to another: nothing is lost, and a task may be done
twice, which is why the collector counts each task once.

    python -m patterns.tasks collector --transport amqp
    python -m patterns.tasks worker --transport amqp --name w1      # any number, anywhere
    python -m patterns.tasks producer --transport amqp --max-length 4 --word node

Beyond the book's sample:

* the worker hashes its next task while the confirms of the last one are on their way
  (`finish` runs as a task of its own, one per unacked delivery, so at most `prefetch`);
* a task that cannot be done goes to the dead-letter queue `tasks_queue.dead` with its
  reason: one that is not a task at once, one that keeps killing workers after
  `max_attempts` deliveries. The book's queues are declared with default arguments (its
  samples must declare the same), so they are classic queues, which do not count
  deliveries: a worker that gets a *redelivered* task puts a copy at the back of the
  queue with the count in a header, `x-attempts`, and acks the original;
* the producer holds back while `window` tasks wait in the queue, and publishes again
  what the broker had not confirmed when a connection drops (at least once);
* the collector's notice that the word is found goes out on the fanout exchange
  `tasks_control`: workers skip the rest of that job, the producer stops.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from itertools import islice

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from patterns import clients
from patterns.events import OnEvent, log_event
from patterns.tasks import wire
from patterns.tasks.collect import IDLE_S, INTERVAL_S, Collector
from patterns.tasks.job import Channels
from patterns.tasks.work import Outcome, Worker

log = logging.getLogger("patterns.tasks.amqp")
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
ATTEMPTS = "x-attempts"
PREFETCH = 10  # unacked tasks a worker holds: tens of ms of hashing
WINDOW = 1_000  # tasks waiting in the queue before the producer holds back
CHUNK = 100  # tasks published together, their confirms awaited together


async def declare(channel: AbstractChannel, channels: Channels) -> AbstractQueue:
    """The book's queues (durable, default arguments) and ours; the tasks queue."""
    for name in (channels.results, channels.reports, channels.dead):
        await channel.declare_queue(name, durable=True)
    await channel.declare_exchange(channels.control, aio_pika.ExchangeType.FANOUT)
    return await channel.declare_queue(channels.tasks, durable=True)


async def publish(channel: AbstractChannel, queue: str, body: bytes, **headers: object) -> None:
    """A persistent message to `queue`; returns once the broker confirmed it."""
    message = aio_pika.Message(body, delivery_mode=PERSISTENT, headers=headers or None)
    await channel.default_exchange.publish(message, routing_key=queue)


async def again(channel: AbstractChannel, step: Callable[[], Awaitable[object]]) -> None:
    """`await step()`; if the connection drops meanwhile, wait until the robust channel is
    back and do it again: at least once."""
    while True:
        try:
            return await step()  # type: ignore[return-value]
        except clients.AMQP_LOST:
            await channel.ready()


async def listen(
    channel: AbstractChannel, exchange: str, on_notice: Callable[[bytes], object]
) -> None:
    """Hear the collector's notices on a queue of our own, bound to the control exchange."""
    notices = await channel.declare_queue(exclusive=True)
    await notices.bind(exchange)
    await notices.consume(lambda message: on_notice(message.body), no_ack=True)


# ---- producer ---------------------------------------------------------------------------


async def producer(
    channels: Channels,
    job: wire.Job,
    tasks: Iterable[wire.Task],
    *,
    window: int = WINDOW,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> int:
    """Publish the job's tasks until all are sent or the word is found; how many were sent."""
    cracked = asyncio.Event()
    async with await clients.amqp(url) as connection:
        channel = await connection.channel()  # publisher confirms: on
        queue = await declare(channel, channels)
        await listen(
            channel, channels.control, lambda n: wire.cracks(n, job.searchHash) and cracked.set()
        )
        await again(channel, lambda: publish(channel, channels.reports, wire.encode(job)))
        on_event("ready", job=job.job, tasks=job.tasks)
        sent, bodies = 0, (wire.encode_task(task) for task in tasks)
        while not cracked.is_set() and (chunk := list(islice(bodies, min(CHUNK, window)))):

            async def send(chunk: list[bytes] = chunk) -> None:
                while (await queue.declare()).message_count >= window:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # a declare says how many wait: polled, no event
                await asyncio.gather(*(publish(channel, channels.tasks, b) for b in chunk))

            await again(channel, send)  # at least once: the whole chunk again after a cut
            sent += len(chunk)
        done = wire.encode(wire.Sent(job.job, sent))
        await again(channel, lambda: publish(channel, channels.reports, done))
    on_event("result", job=job.job, sent=sent)
    return sent


# ---- worker -----------------------------------------------------------------------------


def attempts_of(message: AbstractIncomingMessage) -> int:
    """Which delivery of this task this is: counted in a header (classic queues do not)."""
    counted = (message.headers or {}).get(ATTEMPTS, 1)
    counted = counted if type(counted) is int and counted > 0 else 1
    return counted + 1 if message.redelivered else counted


async def worker(
    channels: Channels,
    work: Worker,
    *,
    prefetch: int = PREFETCH,
    exit_after: int | None = None,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> None:
    """Take tasks one at a time; each is acked once what it produced is confirmed."""
    finishing: set[asyncio.Task] = set()
    async with await clients.amqp(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)  # at most this many unacked tasks
        tasks = await declare(channel, channels)
        await listen(channel, channels.control, work.learn)
        on_event("ready", name=work.name)
        async with tasks.iterator() as deliveries:
            async for message in deliveries:
                attempts = attempts_of(message)
                if message.redelivered and attempts <= work.max_attempts:
                    await count_delivery(channel, channels, message, attempts)
                    continue
                outcome = await work.process(message.body, attempts)
                done = asyncio.create_task(finish(channel, channels, message, outcome))
                finishing.add(done)
                done.add_done_callback(finishing.discard)
                if work.tally.tasks + work.tally.dead == exit_after:
                    break
            await asyncio.gather(*finishing)  # every finished task acked before leaving
    on_event("result", name=work.name, **work.tally.as_dict())


async def count_delivery(
    channel: AbstractChannel, channels: Channels, message: AbstractIncomingMessage, attempts: int
) -> None:
    """A copy of the task with its delivery count goes to the back of the queue; the original
    is acked once the copy is confirmed (if not, it comes again, uncounted)."""
    try:
        async with message.process(requeue=True):
            await publish(channel, channels.tasks, message.body, **{ATTEMPTS: attempts})
    except Exception as error:
        log.warning("a redelivered task stays unacked (%s)", clients.reason(error))


async def finish(
    channel: AbstractChannel, channels: Channels, message: AbstractIncomingMessage, outcome: Outcome
) -> None:
    """Publish what the task produced; ack it once all is confirmed. If a publish fails (the
    connection lost, the broker's nack), the task is not acked: it will be delivered again."""
    try:
        async with message.process(requeue=True, ignore_processed=True):
            if outcome.result is not None:
                await publish(channel, channels.results, outcome.result)  # the book's `Found:`
            if outcome.dead is not None:
                reason = {"x-reason": outcome.dead.reason}
                await publish(channel, channels.dead, message.body, **reason)
            await publish(channel, channels.reports, outcome.report)
    except Exception as error:
        log.warning("a task stays unacked (%s): it will come again", clients.reason(error))


# ---- collector --------------------------------------------------------------------------


async def collector(
    channels: Channels,
    *,
    idle_timeout: float = IDLE_S,
    interval: float = INTERVAL_S,
    url: str | None = None,
    on_event: OnEvent = log_event,
) -> dict:
    """Record results and reports until the job is accounted for; tell the workers when
    the word is found."""
    collected = Collector(on_event)
    async with await clients.amqp(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1_000)
        await declare(channel, channels)
        control = await channel.get_exchange(channels.control)

        async def take(message: AbstractIncomingMessage) -> None:
            async with message.process():  # recorded, then acked (take never raises)
                notice = collected.take(message.body)
            if notice is not None:
                await control.publish(aio_pika.Message(wire.encode(notice)), routing_key="")

        for name in (channels.results, channels.reports):
            await (await channel.get_queue(name)).consume(take)
        on_event("ready", results=channels.results, reports=channels.reports)
        await collected.wait(idle_timeout, interval)
    return collected.result()
