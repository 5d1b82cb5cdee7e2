"""The hashsum cracker end to end over each transport, against the real brokers: the book's
job, a worker killed with kill -9, poison tasks, a broker going away mid-job."""

import asyncio
import hashlib
import json

import pytest
import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import amqpio, config, processes
from patterns.faults import Proxy
from patterns.tasks import amqp, run, streams, wire
from patterns.tasks.job import TRANSPORTS, Channels, plan, unique

NODE_HASH = "f8e966d1e207d02c44511a58dccff2f5429e9a3b"
NOWHERE = hashlib.sha1(b"not in the space").hexdigest()  # every task is hashed in full
FAULT_JOB = {"search_hash": NOWHERE, "max_length": 5, "alphabet": "abcdefghijklmnop"}  # 112
FAST = ("--interval", "0.05")
BROKER_URL = {"amqp": config.AMQP_URL, "streams": config.REDIS_URL}
URL_VARIABLE = {"amqp": "AMQP_URL", "streams": "REDIS_URL"}


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture
async def channels(transport: str):
    mine = unique(transport, "test")
    yield mine
    await run.cleanup(transport, mine)


# ZeroMQ has no broker: no queue to redeliver from, no dead letters, nothing to cut
brokered = pytest.mark.parametrize("transport", ["amqp", "streams"])


async def test_the_book_job_is_cracked_and_stops_early(transport: str, channels: Channels):
    result = await run.crack(transport, channels, word="node", collector_options=FAST)
    assert (result["word"], result["index"], result["complete"]) == ("node", 256313, True)
    assert result["seconds_to_word"] <= result["seconds"]
    ledger = result["ledger"]
    assert ledger["lost"] == 0 and ledger["sent"] == result["tasks"] <= 48
    assert result["hashed_tasks"] + result["skipped"] + result["dead_tasks"] == result["tasks"]
    assert sorted(result["workers"]) == ["w1", "w2"]  # both did some of it
    assert result["found_report"]["word"] == "node"


async def test_a_worker_killed_mid_job(transport: str, channels: Channels) -> None:
    book = ("--hwm", "0")  # zmq: ZeroMQ's default queues, so PUSH deals half the job to w1
    options = {"zmq": book, "amqp": (), "streams": ("--claim-idle", "0.5")}[transport]
    collector = (*FAST, "--idle-timeout", "2") if transport == "zmq" else FAST
    result = await run.crack(
        transport,
        channels,
        **FAULT_JOB,
        worker_options=options,
        producer_options=book if transport == "zmq" else (),
        collector_options=collector,
        during=run.kill_worker_when(0.25),
    )
    ledger = result["ledger"]
    assert result["killed"] == ["w1"] and result["word"] is None
    assert ledger["sent"] == 112 and result["tasks"] == 112
    if transport == "zmq":  # PUSH forgot what it had dealt to w1: lost, and the ledger says which
        assert not result["complete"] and ledger["lost"] > 0
        lost = next(iter(ledger["lost_seqs"].values()))
        assert len({seq % 2 for seq in lost}) == 1  # round-robin: all were w1's share
        assert ledger["received"] - ledger["duplicated"] + ledger["lost"] == 112
    else:  # redelivered (AMQP) or reclaimed (XAUTOCLAIM): nothing lost
        assert result["complete"] and ledger["lost"] == 0
        assert ledger["received"] - ledger["duplicated"] == 112


async def test_a_zmq_worker_killed_with_short_queues_loses_only_what_it_held() -> None:
    """With the default `--hwm 1`, PUSH deals only to a worker with room: w2 takes on what
    w1 would have queued, and w1 dies with dozens of tasks at most, not half the job."""
    channels = unique("zmq", "test")
    result = await run.crack(
        "zmq",
        channels,
        **FAULT_JOB,
        producer_options=("--batch-size", "1000"),  # 1,119 tasks
        collector_options=(*FAST, "--idle-timeout", "2"),
        during=run.kill_worker_when(0.25),
    )
    ledger = result["ledger"]
    assert result["killed"] == ["w1"] and ledger["sent"] == 1_119
    assert ledger["received"] - ledger["duplicated"] + ledger["lost"] == 1_119
    assert ledger["lost"] < 200 and result["workers"]["w2"] > 1_119 // 2


POISON = [b"not json", b'{"searchHash": "%s", "alphabet": "ab"}' % NODE_HASH.encode()]
REASONS = ["not JSON: Expecting value: line 1 column 1 (char 0)", "missing field batchStart"]


@brokered
async def test_poison_tasks_go_to_the_dead_letters_and_the_job_goes_on(
    transport: str, channels: Channels
) -> None:
    if transport == "amqp":
        await amqp.publish_raw(channels, POISON)
    else:
        await streams.add_raw(channels, [{"task": p} for p in POISON] + [{"other": b"x"}])
    result = await run.crack(
        transport, channels, word="cab", max_length=3, workers=1, collector_options=FAST
    )
    assert result["word"] == "cab" and result["complete"]
    letters = await (amqp if transport == "amqp" else streams).dead_letters(channels)
    expected = [*REASONS, "no field 'task' in the entry, only: other"]
    assert [letter["reason"] for letter in letters] == expected[: len(letters)]
    assert len(letters) == len(POISON) + (transport == "streams")
    assert letters[0]["task"] == "not json" and letters[0]["worker"] == "w1"


async def test_a_zmq_worker_reports_a_poison_task_and_goes_on() -> None:
    context = zmq.asyncio.Context()
    try:
        tasks, sink, control = (context.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.PUB))
        endpoints = [s.bind("tcp://127.0.0.1:0").addr for s in (tasks, sink, control)]
        async with processes.children() as started:
            options = Channels(*endpoints).options()
            started.append(
                await processes.start(
                    "patterns.tasks", "worker", "--transport", "zmq", "--name", "w1", *options
                )
            )
            await tasks.send(b"not json")
            _, good = plan(NODE_HASH, 4, batch_size=300_000)
            await tasks.send(wire.encode_task(next(good)))
            dead = wire.decode(await asyncio.wait_for(sink.recv(), 10))
            assert isinstance(dead, wire.Dead) and dead.reason == REASONS[0]
            assert await asyncio.wait_for(sink.recv(), 10) == b"Found: node"
    finally:
        context.destroy(linger=0)


@brokered
async def test_the_broker_goes_away_mid_job_and_nothing_is_lost(
    transport: str, channels: Channels
) -> None:
    cut = asyncio.Event()
    async with Proxy(BROKER_URL[transport]) as proxy:

        async def outage(crew: run.Crew, stats: dict) -> None:
            if not cut.is_set() and stats["accounted"] >= 30:
                cut.set()
                await proxy.cut()  # every client's connection drops; new ones are refused
                asyncio.get_running_loop().call_later(0.5, asyncio.ensure_future, proxy.resume())

        result = await run.crack(
            transport,
            channels,
            **FAULT_JOB,
            producer_options=("--window", "8"),  # so the producer is mid-job at the cut
            collector_options=FAST,
            worker_options=("--claim-idle", "1") if transport == "streams" else (),
            during=outage,
            env={URL_VARIABLE[transport]: proxy.url},
        )
    assert cut.is_set()
    assert result["complete"] and result["ledger"]["lost"] == 0
    assert result["ledger"]["received"] - result["ledger"]["duplicated"] == 112


async def eventually(check, timeout: float = 20.0, every: float = 0.05):
    """The first truthy `await check()`: a broker tells nobody when a queue's state changes."""
    async with asyncio.timeout(timeout):
        while not (value := await check()):  # noqa: ASYNC110 (polling is the only way here)
            await asyncio.sleep(every)
    return value


async def taken(channels: Channels) -> bool:
    """Has a worker taken the one task (delivered, not yet acked)?"""
    if channels.group:
        return bool((await streams.pending(channels))["pending"])
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        return not (await channel.queue_declare(channels.tasks, passive=True)).message_count
    finally:
        await connection.close()


@brokered
async def test_a_task_that_keeps_killing_workers_ends_in_the_dead_letters(
    transport: str, channels: Channels
) -> None:
    big = wire.Task(NOWHERE, "abcdefghijklmnopqrstuvwxyz", 1, 9_000_000, "j")  # seconds of work
    if transport == "amqp":
        await amqp.publish_raw(channels, [wire.encode_task(big)])
    else:
        await streams.add_raw(channels, [{"task": wire.encode_task(big)}])
    options = (
        "--transport", transport, *channels.options(), "--max-attempts", "1",
        "--prefetch", "1", "--claim-idle", "0.3",
    )  # fmt: skip
    async with processes.children() as started:
        first = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
        started.append(first)
        await eventually(lambda: taken(channels))
        first.kill()  # mid-task: it never acks
        second = await processes.start("patterns.tasks", "worker", *options, "--name", "w2")
        started.append(second)
        module = amqp if transport == "amqp" else streams
        letters = await eventually(lambda: module.dead_letters(channels))
    assert letters[0]["reason"] == "delivered 2 times, more than 1: never finished"
    assert letters[0]["worker"] == "w2" and json.loads(letters[0]["task"])["batchEnd"] == 9_000_000


async def test_a_restarted_streams_worker_first_finishes_its_own_pending_task(reap) -> None:
    channels = unique("streams", "test")
    try:
        task = wire.Task(NODE_HASH, "abcdefghijklmnopqrstuvwxyz", 1, 3_000_000, "j")
        await streams.add_raw(channels, [{"task": wire.encode_task(task)}])
        options = ("--transport", "streams", *channels.options(), "--claim-idle", "600")
        async with processes.children() as started:
            first = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(first)
            await eventually(lambda: taken(channels))
            first.kill()
            assert (await streams.pending(channels))["consumers"] == {"w1": 1}
            again = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(again)
            client = aioredis.from_url(config.REDIS_URL)
            try:
                await eventually(lambda: client.xlen(channels.results))
                results = [f[b"result"] for _, f in await client.xrange(channels.results)]
            finally:
                await client.aclose()
        assert results[0] == b"Found: node"
        assert (await streams.pending(channels))["pending"] == 0
    finally:
        await run.cleanup("streams", channels)


async def test_amqp_deliveries_come_in_order_wait_a_while_and_end_with_none() -> None:
    channels = unique("amqp", "test")
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        await amqp.declare(channel, channels)
        deliveries = await amqp.consume(channel, channels.tasks)
        assert await deliveries.next(0.05) is False  # nothing came within 50 ms
        await amqp.publish_raw(channels, [b"one", b"two"])
        bodies = []
        for _ in range(2):
            assert await deliveries.next(5) is True
            bodies.append(deliveries.waiting.popleft().body)
        assert bodies == [b"one", b"two"] and not deliveries.waiting
        waiting = asyncio.create_task(deliveries.next())  # no time limit: the close ends it
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await channel.close()
        assert await asyncio.wait_for(waiting, 5) is True
        assert deliveries.waiting[0] is None  # the channel closed: start again
    finally:
        await connection.close()
        await run.cleanup("amqp", channels)


async def test_amqp_acks_go_several_at_once_and_never_cover_a_requeued_task() -> None:
    channels = unique("amqp", "test")
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        await amqp.declare(channel, channels)
        bodies = [f"task {n}".encode() for n in range(6)]
        await amqp.publish_raw(channels, bodies)
        await channel.basic_qos(prefetch_count=10)
        delivered: asyncio.Queue[amqpio.Delivery] = asyncio.Queue()
        consumer = await channel.basic_consume(channels.tasks, delivered.put_nowait)
        messages = [await delivered.get() for _ in bodies]
        acks = amqp.Acks(channel, every=3)
        tags = [m.delivery_tag for m in messages]
        for tag in tags:
            acks.take(tag)
        acks.settle([tags[0]], True)
        acks.settle([tags[2]], True)
        acks.settle([tags[1]], False)  # three settled: 0 and 2 acked, 1 requeued
        assert acks.taken[0] == tags[3] and not acks.settled
        acks.settle([tags[4]], True)
        acks.settle([tags[5]], True)  # waits for 3: nothing goes out yet
        assert list(acks.taken) == tags[3:] and len(acks.settled) == 2
        acks.idle = True
        acks.settle([tags[3]], True)  # idle: everything settled goes out now
        assert not acks.taken and not acks.settled
        again = await delivered.get()  # only the requeued one comes back
        assert (again.body, again.redelivered) == (bodies[1], True)
        await channel.basic_cancel(consumer)
        assert not channel.is_closed  # no ack ever named a tag twice
        assert (await channel.queue_declare(channels.tasks, passive=True)).message_count == 0
    finally:
        await connection.close()
        await run.cleanup("amqp", channels)


async def test_an_amqp_worker_whose_queue_is_deleted_declares_it_again_and_goes_on() -> None:
    """A deleted queue: the broker cancels its consumers and leaves their connections open.
    The worker starts again on a new connection instead of waiting for ever."""
    channels = unique("amqp", "test")
    task = wire.encode_task(wire.Task(NODE_HASH, "ab", 1, 2, "j"))
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()

        async def reports() -> int:
            return (await channel.queue_declare(channels.results, passive=True)).message_count

        options = ("--transport", "amqp", *channels.options(), "--exit-after", "2")
        async with processes.children() as started:
            worker = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(worker)
            await amqp.publish_raw(channels, [task])
            await eventually(reports)  # the first task is done
            await channel.queue_delete(channels.tasks)
            await amqp.publish_raw(channels, [task])  # declared again, by the publisher
            result = await worker.next_report("result", timeout=20)
            assert result["tasks"] == 2
            assert "cancelled the consumer" in worker.log()
    finally:
        await connection.close()
        await run.cleanup("amqp", channels)


async def test_a_streams_worker_whose_stream_is_deleted_creates_its_group_again() -> None:
    """A deleted stream (or Redis restarted without its data) takes the group with it: the
    worker's blocked read fails, and the worker creates the group again and goes on."""
    channels = unique("streams", "test")
    task = {"task": wire.encode_task(wire.Task(NODE_HASH, "ab", 1, 2, "j"))}
    client = aioredis.from_url(config.REDIS_URL)
    try:
        options = ("--transport", "streams", *channels.options(), "--exit-after", "2")
        async with processes.children() as started:
            worker = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(worker)
            await streams.add_raw(channels, [task])
            await eventually(lambda: client.xlen(channels.results))  # the first task is done
            await client.delete(channels.tasks)
            assert await streams.backlog(client, channels.tasks, channels.group) == 0
            await client.xadd(channels.tasks, task)  # no group yet, or a new one: either way
            result = await worker.next_report("result", timeout=20)
            assert result["tasks"] == 2
            assert f"has no group {channels.group}" in worker.log()
    finally:
        await client.aclose()
        await run.cleanup("streams", channels)
