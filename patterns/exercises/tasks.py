"""The exercises of the task-distribution notebooks (06-08), checked against the real brokers."""

import asyncio
import json
import signal
import uuid
from typing import Any

import aio_pika
import zmq
import zmq.asyncio

from patterns import clients, processes
from patterns.exercises.checking import Wrong, exercise
from patterns.tasks import wire
from patterns.tasks.job import Channels, plan

NOWHERE = "0" * 40  # no word's SHA-1: every task is hashed in full
NODE_HASH = "f8e966d1e207d02c44511a58dccff2f5429e9a3b"


# ---- 06: ZeroMQ --------------------------------------------------------------------------


async def zmq_workers(context: zmq.asyncio.Context, count: int, started: list) -> dict[str, Any]:
    """Sockets bound for `count` real workers (started as children) to connect to."""
    sockets = {
        "tasks": context.socket(zmq.PUSH),
        "results": context.socket(zmq.PULL),
        "control": context.socket(zmq.PUB),
        "reports": context.socket(zmq.PULL),
    }
    sockets["tasks"].sndhwm, sockets["tasks"].sndbuf = 1, 1  # short queues
    for socket in sockets.values():
        socket.linger = 0
        socket.bind("tcp://127.0.0.1:0")
    channels = Channels(*(s.getsockopt_string(zmq.LAST_ENDPOINT) for s in sockets.values()))
    options = ("--transport", "zmq", *channels.options())
    workers = await asyncio.gather(
        *(
            processes.start("patterns.tasks", "worker", *options, "--name", name, name=name)
            for name in ("w1", "w2")[:count]
        )
    )
    started.extend(workers)
    return sockets | {"workers": workers}


@exercise("06.1")
async def reliable_producer(answer: Any) -> str:
    """Two workers, one frozen a few tasks in (SIGSTOP: it never reports what it holds, as if
    dead): every task must still be reported."""
    context = zmq.asyncio.Context()
    _, tasks = plan(NOWHERE, 4, "abcdefghijklmnop", batch_size=2_000)  # 35 tasks
    bodies = [wire.encode_task(task) for task in tasks]
    try:
        async with processes.children() as started:
            sockets = await zmq_workers(context, 2, started)
            reports, seen = context.socket(zmq.PULL), []
            reports.bind("inproc://reports")
            tee = context.socket(zmq.PUSH)  # the answer's copy of every report
            tee.connect("inproc://reports")

            async def watch() -> None:  # freeze w1 once a few tasks are done; keep a tally
                while True:
                    data = await sockets["reports"].recv()
                    seen.append(wire.decode_report(data).batchStart)
                    if len(seen) == 5:  # w1 freezes, holding what was queued to it
                        sockets["workers"][0].kill(signal.SIGSTOP)
                    await tee.send(data)

            watching = asyncio.create_task(watch())
            try:
                resent = await answer(bodies, sockets["tasks"], reports, 1.0)
            finally:
                watching.cancel()
                sockets["workers"][0].kill()  # SIGKILL reaches a stopped process too
    finally:
        context.destroy(linger=0)
    missing = {json.loads(b)["batchStart"] for b in bodies} - set(seen)
    if missing:
        raise Wrong(
            f"{len(missing)} of {len(bodies)} tasks were never reported, e.g. batch {min(missing)}"
        )
    if not resent:
        raise Wrong("every task was reported, but it says it sent none again")
    return f"all {len(bodies)} tasks reported although w1 froze; the ones it held were sent again"


@exercise("06.2")
async def announcing_sink(answer: Any) -> str:
    """The book's job dealt to two real workers; the answer is the sink."""
    context = zmq.asyncio.Context()
    job, tasks = plan(NODE_HASH, 4)
    try:
        async with processes.children() as started:
            sockets = await zmq_workers(context, 2, started)
            reports: list[wire.Done] = []

            async def deal() -> None:
                for task in tasks:
                    await sockets["tasks"].send(wire.encode_task(task))

            async def tally() -> None:
                while len(reports) < job.tasks:
                    reports.append(wire.decode_report(await sockets["reports"].recv()))

            dealing, tallying = asyncio.create_task(deal()), asyncio.create_task(tally())
            try:
                word = await answer(sockets["results"], sockets["control"], job.searchHash)
                await asyncio.wait_for(asyncio.gather(dealing, tallying), 30)
            finally:
                dealing.cancel()
                tallying.cancel()
    finally:
        context.destroy(linger=0)
    if word != "node":
        raise Wrong(f"it returned {word!r}; the word of the book's hash is 'node'")
    skipped = sum(report.skipped for report in reports)
    if not skipped:
        raise Wrong("the workers hashed every task: they never heard the notice on control")
    return "found 'node' and announced it: the workers skipped the rest of the job"


# ---- 07: AMQP ----------------------------------------------------------------------------


@exercise("07.1")
async def idempotent_consumer(answer: Any) -> str:
    """Ten tasks, three of them delivered twice (as after a crash before the ack)."""
    name = f"exercise:{uuid.uuid4().hex[:8]}"
    bodies = [f"task {n}".encode() for n in range(10)]
    twice = {2, 5, 7}
    async with await clients.amqp() as connection, clients.redis() as redis:
        channel = await connection.channel()
        queue = await channel.declare_queue(name)
        try:
            for n, body in enumerate(bodies):
                for _ in range(2 if n in twice else 1):
                    message = aio_pika.Message(body, message_id=f"id-{n}")
                    await channel.default_exchange.publish(message, routing_key=name)
            consuming = await connection.channel()  # closed after: what it left unacked returns
            await consuming.set_qos(prefetch_count=100)
            async with (await consuming.get_queue(name)).iterator() as messages:
                handled = 0
                async for message in messages:
                    await answer(message, redis, name)
                    handled += 1
                    if handled == len(bodies) + len(twice):
                        break
            await consuming.close()
            done = await redis.lrange(name, 0, -1)
            left = await queue.declare()  # declared again: the broker says how many wait
        finally:
            await redis.delete(name, f"{name}:seen")
            await queue.delete(if_unused=False, if_empty=False)
    if left.message_count:
        raise Wrong(f"{left.message_count} messages were never acked: ack each one, duplicates too")
    if sorted(done) != sorted(bodies):
        extra = len(done) - len(bodies)
        raise Wrong(f"the work list holds {len(done)} items for {len(bodies)} tasks ({extra:+d})")
    return f"{len(bodies)} tasks done once each out of {len(bodies) + len(twice)} deliveries"


@exercise("07.2")
async def broker_dead_letters(answer: Any) -> str:
    """A queue declared by the answer; a poison message rejected; where does it go?"""
    name = f"exercise:{uuid.uuid4().hex[:8]}"
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        try:
            queue, dead = await answer(channel, name)
            await channel.default_exchange.publish(aio_pika.Message(b"poison"), routing_key=name)
            message = await queue.get(timeout=5, fail=False)
            if message is None:
                raise Wrong(f"a message published to {name!r} never reached the queue returned")
            await message.reject(requeue=False)  # what a worker does with a poison task
            for _ in range(50):
                letter = await dead.get(fail=False, no_ack=True)
                if letter is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise Wrong("the rejected message never reached the dead-letter queue")
        finally:
            for queue_name in (name, f"{name}.dead"):
                await channel.queue_delete(queue_name)
            await channel.exchange_delete(f"{name}.dlx")
    deaths = (letter.headers or {}).get("x-death") or []
    if letter.body != b"poison" or not deaths:
        raise Wrong("the dead-letter queue holds something else than the rejected message")
    return f"rejected, dead-lettered by the broker (x-death reason: {deaths[0]['reason']})"


# ---- 08: Redis Streams -------------------------------------------------------------------


async def stream_with_pending(redis: Any, deliveries: int = 1) -> tuple[str, str, list[bytes]]:
    """A stream, a group, three entries taken by consumer "gone" and never acked."""
    stream = f"exercise:{uuid.uuid4().hex[:8]}"
    await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    ids = [await redis.xadd(stream, {"task": f"task {n}"}) for n in range(3)]
    await redis.xreadgroup("workers", "gone", {stream: ">"})
    for _ in range(deliveries - 1):  # each claim counts as a delivery
        await redis.xclaim(stream, "workers", "gone", 0, ids)
    await redis.xadd(stream, {"task": "fresh"})  # a fourth, never delivered
    return stream, "workers", ids


@exercise("08.1")
async def reclaim(answer: Any) -> str:
    async with clients.redis() as redis:
        stream, group, ids = await stream_with_pending(redis)
        try:
            await asyncio.sleep(0.2)
            claimed = await answer(redis, stream, group, "me", 100)
            pending = await redis.xpending_range(stream, group, "-", "+", 10)
        finally:
            await redis.delete(stream)
    if sorted(claimed) != sorted(ids):
        raise Wrong(f"it returned {len(claimed)} ids; the 3 entries idle at 'gone' were {ids}")
    owners = {entry["consumer"] for entry in pending}
    if owners != {b"me"} or len(pending) != 3:
        raise Wrong(f"the pending entries belong to {sorted(owners)}, not only to 'me'")
    return "3 entries idle at a dead consumer now pending at 'me' (XAUTOCLAIM)"


@exercise("08.2")
async def poison_aside(answer: Any) -> str:
    async with clients.redis() as redis:
        stream, group, _ = await stream_with_pending(redis, deliveries=4)
        dead = f"{stream}.dead"
        try:
            moved = await answer(redis, stream, group, dead, 3)
            pending = await redis.xpending(stream, group)
            letters = await redis.xrange(dead)
        finally:
            await redis.delete(stream, dead)
    if moved != 3 or len(letters) != 3:
        raise Wrong(f"it moved {moved} and the dead-letter stream holds {len(letters)}; 3 expected")
    if pending["pending"]:
        raise Wrong(f"{pending['pending']} entries are still pending: ack what was set aside")
    if {f.get(b"task") for _, f in letters} != {b"task 0", b"task 1", b"task 2"}:
        raise Wrong("the dead letters do not hold the tasks as they were (field 'task')")
    return "3 entries delivered 4 times set aside, acked, the fresh one left alone"
