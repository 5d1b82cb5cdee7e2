"""The hashsum cracker end to end over each transport, against the real brokers: the book's
job, a worker killed with kill -9, poison tasks, a broker going away mid-job, a broker
that comes back without its data."""

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import aio_pika
import pytest
import zmq
import zmq.asyncio

from patterns import clients, config, processes
from patterns.faults import Proxy, RedisServer
from patterns.messages import MalformedMessage
from patterns.tasks import admin, run, streams, wire
from patterns.tasks.job import TRANSPORTS, Channels, plan, unique

NODE_HASH = "f8e966d1e207d02c44511a58dccff2f5429e9a3b"
NOWHERE = hashlib.sha1(b"not in the space").hexdigest()  # every task is hashed in full
FAULT_JOB = {"search_hash": NOWHERE, "max_length": 5, "alphabet": "abcdefghijklmnop"}  # 112
FAST = ("--idle-timeout", "20")
BROKER_URL = {"amqp": config.AMQP_URL, "streams": config.REDIS_URL}
URL_VARIABLE = {"amqp": "AMQP_URL", "streams": "REDIS_URL"}


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture
async def channels(transport: str):
    mine = unique(transport, "test")
    yield mine
    await admin.delete(transport, mine)


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
    assert result["malformed"] == result["foreign"] == 0


async def test_a_worker_killed_mid_job(transport: str, channels: Channels) -> None:
    book = ("--hwm", "0")  # zmq: ZeroMQ's default queues, so PUSH deals half the job to w1
    options = {"zmq": book, "amqp": (), "streams": ("--claim-idle", "0.5")}[transport]
    result = await run.crack(
        transport,
        channels,
        **FAULT_JOB,
        worker_options=options,
        producer_options=book if transport == "zmq" else (),
        collector_options=("--idle-timeout", "2" if transport == "zmq" else "20"),
        during=run.kill_worker_when(0.25),
    )
    ledger = result["ledger"]
    assert result["killed"] == ["w1"] and result["word"] is None
    assert ledger["sent"] == 112 and result["tasks"] == 112
    if transport == "zmq":  # PUSH forgot what it had dealt to w1: lost, and the ledger says which
        assert not result["complete"] and ledger["lost"] > 0 and result["missing"] == ledger["lost"]
        lost = next(iter(ledger["lost_seqs"].values()))
        assert len({seq % 2 for seq in lost}) == 1  # round-robin: all were w1's share
        assert ledger["received"] - ledger["duplicated"] + ledger["lost"] == 112
        assert result["gave_up"].startswith("nothing came for 2 s")
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
        collector_options=("--idle-timeout", "2"),
        during=run.kill_worker_when(0.25),
    )
    ledger = result["ledger"]
    assert result["killed"] == ["w1"] and ledger["sent"] == 1_119
    assert ledger["received"] - ledger["duplicated"] + ledger["lost"] == 1_119
    assert ledger["lost"] < 200 and result["workers"]["w2"] > 1_119 // 2


POISON = [
    b"not json",
    b'{"searchHash": "%s", "alphabet": "ab"}' % NODE_HASH.encode(),
    # a 5,000-digit integer (json.loads raises a plain ValueError): it once killed every
    # worker in turn; it is refused unread now, being over the size limit
    b'{"searchHash": "%s", "alphabet": "ab", "batchStart": %s, "batchEnd": 2}'
    % (NODE_HASH.encode(), b"9" * 5_000),
    # valid-looking, and ~10^12 candidates of one letter: a worker that never ends
    b'{"searchHash": "%s", "alphabet": "a", "batchStart": 1000000000000,'
    b' "batchEnd": 1000000000000}' % NODE_HASH.encode(),
]
REASONS = [
    "not JSON: Expecting value: line 1 column 1 (char 0)",
    "missing field batchStart",
    "5,107 bytes, over the 4,096-byte limit",
    "alphabet must be 2 to 256 letters, not 'a'",
]


@brokered
async def test_poison_tasks_go_to_the_dead_letters_and_the_job_goes_on(
    transport: str, channels: Channels
) -> None:
    extra = [{"other": b"x"}] if transport == "streams" else []
    await admin.put_raw(transport, channels, [*POISON, *extra])
    result = await run.crack(
        transport, channels, word="cab", max_length=3, workers=1, collector_options=FAST
    )
    assert result["word"] == "cab" and result["complete"]
    letters = await admin.dead_letters(transport, channels)
    expected = [*REASONS, "no field 'task' in the entry, only: other"][: len(letters)]
    assert [letter["reason"] for letter in letters] == expected
    assert len(letters) == len(POISON) + len(extra)
    assert letters[0]["task"] == "not json"
    # and the collector heard of each (in the order the worker's reports reached it)
    assert sorted(d["reason"] for d in result["dead"]) == sorted(expected)


async def through_a_zmq_worker(bodies: list[bytes]) -> list[str]:
    """Deal `bodies` to a real ZeroMQ worker, then a task that finds `node`: the reasons of
    the dead reports it sent back, once it has also found the word (it lived on)."""
    context = zmq.asyncio.Context()
    try:
        sockets = [context.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.PUB, zmq.PULL)]
        tasks, results, _, reports = sockets
        endpoints = [s.bind("tcp://127.0.0.1:0").addr for s in sockets]
        async with processes.children() as started:
            options = Channels(*endpoints).options()
            started.append(
                await processes.start(
                    "patterns.tasks", "worker", "--transport", "zmq", "--name", "w1", *options
                )
            )
            for body in bodies:
                await tasks.send(body)
            _, good = plan(NODE_HASH, 4, batch_size=300_000)
            await tasks.send(wire.encode_task(next(good)))
            reasons = []
            for _ in bodies:
                dead = wire.decode_report(await asyncio.wait_for(reports.recv(), 10))
                assert isinstance(dead, wire.Dead)
                reasons.append(dead.reason)
            assert await asyncio.wait_for(results.recv(), 10) == b"Found: node"
            return reasons
    finally:
        context.destroy(linger=0)


async def test_a_zmq_worker_reports_poison_tasks_and_goes_on() -> None:
    assert await through_a_zmq_worker(POISON) == REASONS


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


async def test_redis_restarted_without_its_data_the_collector_names_what_is_missing() -> None:
    """The collector used to wait for ever, printing rates of 0, once the tasks it waited
    for no longer existed anywhere; now it notices its stream went back and says what is
    missing, and exits non-zero."""
    channels = unique("streams", "test")
    async with RedisServer(appendonly=False) as redis_server:
        restarted = asyncio.Event()

        async def restart(crew: run.Crew, stats: dict) -> None:
            # the workers frozen first, so that the producer fills its window with entries
            # nobody holds: those are surely lost with the restart (workers that held
            # every undone task at that instant would make the job complete, rightly)
            if not restarted.is_set() and stats["accounted"] >= 20:
                restarted.set()
                for worker in crew.workers:
                    worker.kill(signal.SIGSTOP)
                try:
                    await asyncio.sleep(1.0)
                    await redis_server.restart()
                finally:
                    for worker in crew.workers:
                        worker.kill(signal.SIGCONT)

        result = await run.crack(
            "streams",
            channels,
            **FAULT_JOB,
            producer_options=("--window", "30"),
            collector_options=("--idle-timeout", "30"),
            during=restart,
            env={"REDIS_URL": redis_server.url},
        )
    assert restarted.is_set() and not result["complete"]
    assert "lost entries" in result["gave_up"] and result["missing"] > 0
    assert len(result["missing_batches"]) == min(100, result["missing"])


async def test_after_redis_reloads_its_append_only_file_the_window_still_holds() -> None:
    """Redis 7.0 cannot say a group's lag after loading its append-only file: the producer
    reads the stream's length instead, and still holds back at its window."""
    channels = unique("streams", "test")
    async with RedisServer(appendonly=True) as redis_server:
        redis = clients.redis(redis_server.url)
        try:
            await streams.ensure_group(redis, channels.tasks, channels.group)
            for n in range(5):
                await redis.xadd(channels.tasks, {"task": b"%d" % n})
            await redis.xreadgroup(channels.group, "w1", {channels.tasks: ">"}, count=2)
            before = await streams.undone(redis, channels.tasks, channels.group)
            await redis.aclose()
            await redis_server.restart()
            redis = clients.redis(redis_server.url)
            after = await streams.undone(redis, channels.tasks, channels.group)
        finally:
            await redis.aclose()
    assert before == after == 5


async def eventually(check, timeout: float = 20.0, every: float = 0.05):
    """The first truthy `await check()`: a broker tells nobody when a queue's state changes."""
    async with asyncio.timeout(timeout):
        while not (value := await check()):  # noqa: ASYNC110 (polling is the only way here)
            await asyncio.sleep(every)
    return value


async def taken(channels: Channels) -> bool:
    """Has a worker taken the one task (delivered, not yet acked)?"""
    if channels.group:
        return bool((await admin.pending(channels))["pending"])
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(channels.tasks, passive=True)
        return not queue.declaration_result.message_count


@brokered
async def test_a_task_that_keeps_killing_workers_ends_in_the_dead_letters(
    transport: str, channels: Channels
) -> None:
    big = wire.Task(NOWHERE, "abcdefghijklmnopqrstuvwxyz", 1, 9_000_000, "j")  # seconds of work
    await admin.put_raw(transport, channels, [wire.encode_task(big)])
    options = (
        "--transport", transport, *channels.options(), "--max-attempts", "1",
        "--prefetch", "1",
    )  # fmt: skip
    options += ("--claim-idle", "0.3") if transport == "streams" else ()
    async with processes.children() as started:
        first = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
        started.append(first)
        await eventually(lambda: taken(channels))
        first.kill()  # mid-task: it never acks
        second = await processes.start("patterns.tasks", "worker", *options, "--name", "w2")
        started.append(second)
        letters = await eventually(lambda: admin.dead_letters(transport, channels))
    assert letters[0]["reason"] == "delivered 2 times, more than 1: never finished"
    assert json.loads(letters[0]["task"])["batchEnd"] == 9_000_000


async def test_a_restarted_streams_worker_first_finishes_its_own_pending_task() -> None:
    channels = unique("streams", "test")
    try:
        task = wire.Task(NODE_HASH, "abcdefghijklmnopqrstuvwxyz", 1, 3_000_000, "j")
        await admin.put_raw("streams", channels, [wire.encode_task(task)])
        options = ("--transport", "streams", *channels.options(), "--claim-idle", "600")
        async with processes.children() as started:
            first = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(first)
            await eventually(lambda: taken(channels))
            first.kill()
            assert (await admin.pending(channels))["consumers"] == {"w1": 1}
            again = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(again)
            async with clients.redis() as redis:
                await eventually(lambda: redis.xlen(channels.results))
                results = [f[b"result"] for _, f in await redis.xrange(channels.results)]
        assert results == [b"Found: node"]
        assert (await admin.pending(channels))["pending"] == 0
    finally:
        await admin.delete("streams", channels)


async def test_a_streams_worker_whose_stream_is_deleted_creates_its_group_again() -> None:
    """A deleted stream (or Redis restarted without its data) takes the group with it: the
    worker's blocked read fails, and the worker creates the group again and goes on."""
    channels = unique("streams", "test")
    task = wire.encode_task(wire.Task(NODE_HASH, "ab", 1, 2, "j"))
    try:
        options = ("--transport", "streams", *channels.options(), "--exit-after", "2")
        async with processes.children() as started, clients.redis() as redis:
            worker = await processes.start("patterns.tasks", "worker", *options, "--name", "w1")
            started.append(worker)
            await admin.put_raw("streams", channels, [task])
            await eventually(lambda: redis.xlen(channels.reports))  # the first task is done
            await redis.delete(channels.tasks)
            assert await streams.undone(redis, channels.tasks, channels.group) == 0
            await redis.xadd(channels.tasks, {"task": task})  # no group yet, or a new one
            result = await worker.next_report("result", timeout=20)
            assert result["tasks"] == 2
            assert "creating the group again" in worker.log()
    finally:
        await admin.delete("streams", channels)


def role(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "patterns.tasks", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | env,
    )


MISCONFIGURED = [
    ("amqp", {"AMQP_URL": "amqp://guest:wrong@127.0.0.1:5672/"}, 2, "refused the login of user"),
    ("amqp", {"AMQP_URL": "amqp//guest@:notaport"}, 2, "is not a valid URL"),
    ("amqp", {"AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/nowhere"}, 2, "virtual host"),
    ("amqp", {"AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}, 3, "unreachable for"),
    ("streams", {"REDIS_URL": "redis://127.0.0.1:1/0"}, 3, "unreachable for"),
    ("streams", {"REDIS_URL": "redis:/127.0.0.1"}, 2, "is not a valid URL"),
]


@pytest.mark.parametrize(("transport", "env", "code", "said"), MISCONFIGURED)
@pytest.mark.parametrize("who", ["producer", "worker", "collector"])
def test_a_misconfigured_role_says_so_in_one_sentence_and_exits(
    who: str, transport: str, env: dict, code: int, said: str
) -> None:
    extra = ("--word", "node") if who == "producer" else ()
    started = time.monotonic()
    ran = role(who, "--transport", transport, "--give-up-after", "1", *extra, env=env)
    assert ran.returncode == code, ran.stderr[-2000:]
    assert time.monotonic() - started < 15
    last = ran.stderr.strip().splitlines()[-1]
    assert said in last and "Traceback" not in ran.stderr
    assert "wrong" not in ran.stderr  # the password is never printed
    if code == 3:  # one line per backoff step, not a flood
        steps = [line for line in ran.stderr.splitlines() if "trying again in" in line]
        assert 1 <= len(steps) <= 10


async def test_a_zmq_collector_exits_non_zero_on_an_incomplete_job() -> None:
    async with processes.children() as started:
        collector = await processes.start(
            "patterns.tasks", "collector", "--transport", "zmq",
            *unique("zmq").options(), "--idle-timeout", "0.5",
        )  # fmt: skip
        started.append(collector)
        context = zmq.asyncio.Context()
        try:
            reports = context.socket(zmq.PUSH)
            reports.connect(collector.ready["reports"])
            job, _ = plan(NODE_HASH, 2, batch_size=100)  # 702 words: 8 tasks, none reported
            await reports.send(wire.encode(job))
            result = await collector.next_report("result", timeout=10)
        finally:
            context.destroy(linger=1000)
        assert await collector.wait(10) == 1
    assert not result["complete"] and result["missing"] == result["tasks"] == 8
    assert f"job {job.job} incomplete: 8 of 8 tasks missing" in collector.log()


@brokered
async def test_the_producer_holds_back_at_its_window(transport: str, channels: Channels) -> None:
    """With no worker, the producer puts `--window` tasks in the broker and waits there."""
    async with processes.children() as started:
        producer = await processes.start(
            "patterns.tasks", "producer", "--transport", transport, *channels.options(),
            "--word", "node", "--max-length", "4", "--window", "10",
        )  # fmt: skip
        started.append(producer)
        await asyncio.sleep(2)  # ample time to send all 48 tasks, were it not held back
        if transport == "amqp":
            async with await clients.amqp() as connection:
                channel = await connection.channel()
                waiting = (
                    await channel.declare_queue(channels.tasks, durable=True)
                ).declaration_result.message_count
        else:
            async with clients.redis() as redis:
                waiting = await redis.xlen(channels.tasks)
        assert waiting == 10 and producer.returncode is None


# ---- random input at every decoding boundary, through the real brokers -----------------

BOUNDARY_VALUES = [None, True, -1, 0, 1.5, 2**63, 10**30, "", "é" * 40, [], {}, "x" * 3_000]


def garbage(seed: int, count: int, valid: bytes, decode) -> list[bytes]:
    """`count` seeded random messages that `decode` refuses: random bytes, random JSON,
    `valid` with a field set to a boundary value, dropped, or an integer too long for
    Python to read (the kind that once killed every worker), or `valid` cut short."""
    rng, fields = random.Random(seed), json.loads(valid)
    found: list[bytes] = []
    while len(found) < count:
        kind, key = rng.randrange(6), rng.choice(sorted(fields))
        if kind == 0:
            data = rng.randbytes(rng.randrange(200))
        elif kind == 1:
            data = json.dumps(rng.choice(BOUNDARY_VALUES)).encode()
        elif kind == 2:
            data = json.dumps(fields | {key: rng.choice(BOUNDARY_VALUES)}).encode()
        elif kind == 3:
            data = json.dumps({k: v for k, v in fields.items() if k != key}).encode()
        elif kind == 4:
            huge = "9" * rng.randrange(4_300, 4_400)  # under the size limit, over int's
            data = json.dumps(fields | {key: 0}).replace(f'"{key}": 0', f'"{key}": {huge}')
            data = data.encode()
        else:
            data = valid[: rng.randrange(len(valid))]
        try:
            decode(data)
        except MalformedMessage:
            found.append(data)
    return found


def random_tasks(seed: int, count: int = 30) -> list[bytes]:
    _, tasks = plan(NODE_HASH, 3, batch_size=10)
    return garbage(seed, count, wire.encode_task(next(tasks)), wire.decode_task)


@brokered
async def test_random_tasks_are_dead_lettered_and_the_next_job_is_done(
    transport: str, channels: Channels
) -> None:
    junk = random_tasks(seed=20)
    await admin.put_raw(transport, channels, junk)
    result = await run.crack(
        transport, channels, word="cab", max_length=3, workers=1, collector_options=FAST
    )
    assert result["word"] == "cab" and result["complete"]  # the worker lived on
    letters = await admin.dead_letters(transport, channels)
    assert len(letters) == len(junk) and all(letter["reason"] for letter in letters)
    assert len(result["dead"]) == len(junk)  # and the collector heard of each


async def test_a_zmq_worker_survives_random_tasks() -> None:
    junk = random_tasks(seed=6)
    assert all(await through_a_zmq_worker(junk))  # each one dead, with a reason


async def put_reports(transport: str, channels: Channels, bodies: list[bytes]) -> None:
    """Put messages on the reports channel as they are, while a collector listens."""
    if transport == "zmq":
        context = zmq.asyncio.Context()
        try:
            push = context.socket(zmq.PUSH)
            push.connect(channels.reports)
            for body in bodies:
                await push.send(body)
            push.linger = 5_000
            push.close()
        finally:
            context.term()
    elif transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            for body in bodies:
                message = aio_pika.Message(body)
                await channel.default_exchange.publish(message, routing_key=channels.reports)
    else:
        async with clients.redis() as redis:
            for body in bodies:
                await redis.xadd(channels.reports, {"report": body})


async def test_random_reports_are_counted_and_skipped(transport: str, channels: Channels) -> None:
    done = wire.encode(wire.Done("w1", "j", NODE_HASH, 1, 10, 10, None, False, 1))
    junk = garbage(7, 30, done, wire.decode_report)
    junk = [j for j in junk if wire.found_word(j) is None]  # "Found: ..." is a result
    sent = asyncio.Event()

    async def inject(crew: run.Crew, stats: dict) -> None:
        if not sent.is_set():
            sent.set()
            where = crew.channels
            if transport == "zmq":  # bound to a free port: the collector said which
                where = dataclasses.replace(where, reports=crew.collector.ready["reports"])
            await put_reports(transport, where, junk)

    result = await run.crack(
        transport,
        channels,
        search_hash=NOWHERE,
        max_length=5,
        alphabet="abcdefghijklmnop",
        workers=1,
        during=inject,
        collector_options=FAST,
    )
    assert sent.is_set() and result["complete"] and result["ledger"]["lost"] == 0
    assert result["malformed"] == len(junk)
