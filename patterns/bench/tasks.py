"""Hashsum cracker: a worker's hashes/s vs a plain loop, 2-vs-1-worker speedup, per-task overhead.

Per transport (zmq, amqp, streams), three comparisons, each made of rounds that alternate
the two sides (so the load of a shared machine falls on both alike) and summarised by the
median of the per-round ratios. In the speedup's, the overhead's and the ceiling's rounds
the two sides swap places every other round (one, two; then two, one): a drift of the
machine's speed over a round then favours each side in half the rounds, not one side in all.

* hashing: our worker cracks a job whose word is not in the space (every candidate is
  hashed), measured inside the worker from its first task to its last (with AMQP and
  Streams the job is queued in the broker before the worker starts), against a plain
  loop in a process of its own hashing the very same candidate words, ready-made, with
  the SHA-1 the worker chose (`worker_sha1`, see patterns.tasks.space): `hash_ratio`,
  target >= 0.9. Beside it, `hash_ratio_hashlib` against `hashlib.sha1`, and the ratio per
  CPU second (on a busy machine the worker shares the cores with the broker; the plain
  loop does not).
* speedup: a job's wall time (the collector's, from the job's announcement to its last
  report) with one worker, over its time with two; the full run's job is every word of up
  to five letters (12,356,630 candidates). Target on 2 cores: >= 1.7.
* overhead: one worker's tasks/s on empty tasks (nothing to hash: all messaging) against
  the raw client loop, the same client library used by hand for the same messaging (take
  the task, decode it, publish a report with the fields of ours, ack), so the ratio is
  the cost of our code. `overhead` gives the idiomatic, fast (none: no tasks variant
  measured 1.5x on this workload) and raw figures; `overhead_ratio`, target >= 0.9, is
  the better of idiomatic and fast against raw (`ratio_of` says which).

Before them, the machine's own ceiling for the speedup (`plain_loops`): two plain loops at
once, each a process, against one (their hashes/s summed), rounds alternating likewise.

The raw loop and the plain loop are this module's children: `python -m
patterns.bench.tasks raw|plain ...`."""

import argparse
import asyncio
import functools
import hashlib
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import zmq
import zmq.asyncio

from patterns import cli, clients, config, processes
from patterns.tasks import admin, amqp, streams, wire, zeromq
from patterns.tasks.job import TRANSPORTS, Channels, unique
from patterns.tasks.run import crack
from patterns.tasks.space import ALPHABET, SHA1S, batches, search_space, word_at

T = TypeVar("T")
NOWHERE = hashlib.sha1(b"not in the space").hexdigest()
EMPTY_TASK = wire.encode_task(wire.Task(NOWHERE, "ab", 1, 0, "empty"))  # batch 1..0: no word
TARGETS = {"hash_ratio": 0.9, "speedup": 1.7, "overhead_ratio": 0.9}
PREFETCH = "10"  # the worker's default (AMQP: unacked tasks held; Streams: entries per read)
ROUNDS = {True: 2, False: 7}  # --quick is the test suite's smoke run: its numbers mean little
# The overhead's rounds are short and their ratio swings (AMQP: 0.82-1.06 from one round to
# the next here, the broker's writes to disk setting the pace), so it takes more of them
# for the median to hold still: AMQP's medians of three runs of 15 rounds were within
# 0.010 of each other, of four runs of 7 within 0.025.
OVERHEAD_ROUNDS = {True: 2, False: 15}
ALPHABETS = {True: "abcdefghijklmnop", False: "abcdefghijklmnopqrst"}  # 16 or 20 letters
MAX_LENGTH = 5  # words of up to 5 letters: 1,118,480 or 3,368,420 candidates
EMPTY_TASKS = {"zmq": 50_000, "amqp": 8_000, "streams": 40_000}  # 1-4 s a round here


def job_options(alphabet: str, max_length: int) -> tuple[str, ...]:
    return ("--hash", NOWHERE, "--alphabet", alphabet, "--max-length", str(max_length))


# ---- the two reference loops (children) -------------------------------------------------


def plain(
    alphabet: str, max_length: int, batch_size: int, which: str = "hashlib"
) -> dict[str, Any]:
    """Hash every candidate with a plain loop over ready-made words: `hashlib.sha1` (the
    issue's reference), or another of `SHA1S`."""
    target = bytes.fromhex(NOWHERE)
    sha1 = SHA1S[which]
    hashed, elapsed_ns, cpu_ns = 0, 0, 0
    for start, end in batches(search_space(len(alphabet), max_length), batch_size):
        words = [word_at(i, alphabet).encode() for i in range(start, end + 1)]
        began, began_cpu = time.perf_counter_ns(), time.process_time_ns()
        for word in words:
            if sha1(word).digest() == target:
                raise AssertionError("the target is not in the space")
        elapsed_ns += time.perf_counter_ns() - began
        cpu_ns += time.process_time_ns() - began_cpu
        hashed += len(words)
    return {"hashed": hashed, "seconds": elapsed_ns / 1e9, "cpu_seconds": cpu_ns / 1e9}


def together(count: int, alphabet: str, max_length: int, batch_size: int) -> dict[str, Any]:
    """`count` plain loops at once, each in a process forked from this one and let go at
    the same moment: their hashes/s summed, what `count` cores give this machine."""
    go_read, go_write = os.pipe()
    loops = []
    for _ in range(count):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a loop: wait for the go, hash, say how it went
            status = 1
            try:
                os.read(go_read, 1)
                os.write(write, json.dumps(plain(alphabet, max_length, batch_size)).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        loops.append((pid, read))
    os.write(go_write, b"." * count)
    rates = []
    for pid, read in loops:
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read()
        if os.waitpid(pid, 0)[1] != 0 or not said:
            raise RuntimeError(f"plain loop {pid} failed (its traceback is above)")
        result = json.loads(said)
        rates.append(result["hashed"] / result["seconds"])
    return {"loops": count, "hashes_per_s": sum(rates)}


def raw_result(task: dict[str, Any]) -> bytes:
    """What the worker reports for an empty task, the same fields, put together the plain
    way: the broker stores and carries as much for either side."""
    report = {
        "worker": "raw",
        "job": task.get("job"),
        "searchHash": task["searchHash"],
        "batchStart": task["batchStart"],
        "batchEnd": task["batchEnd"],
        "hashed": 0,
        "found": None,
        "skipped": False,
        "attempts": 1,
        "type": "done",
    }
    return json.dumps(report, separators=(",", ":")).encode()


async def raw_zmq(options: argparse.Namespace) -> tuple[int, int]:
    context = zmq.asyncio.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        zeromq.bound(pull, zeromq.HWM)  # short queues, as the worker's by default
        pull.connect(options.tasks)
        push.connect(options.reports)
        processes.report("ready")
        first = 0
        for _ in range(options.count):
            task = json.loads(await pull.recv())
            first = first or time.perf_counter_ns()
            await push.send(raw_result(task))
        return first, time.perf_counter_ns()
    finally:
        context.destroy(linger=1_000)


async def raw_amqp(options: argparse.Namespace) -> tuple[int, int]:
    """aio-pika by hand: a consumer callback per task (aio-pika runs each as a task of its
    own), a confirmed publish, an ack."""
    async with await aio_pika.connect_robust(config.AMQP_URL) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=int(PREFETCH))
        queue = await channel.declare_queue(options.tasks, durable=True)
        done = asyncio.Event()
        stamps = [0, 0, 0]  # first, last, count

        async def on_task(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            task = json.loads(message.body)
            stamps[0] = stamps[0] or time.perf_counter_ns()
            report = aio_pika.Message(raw_result(task), delivery_mode=amqp.PERSISTENT)
            await channel.default_exchange.publish(report, routing_key=options.reports)
            await message.ack()
            stamps[2] += 1
            if stamps[2] == options.count:
                stamps[1] = time.perf_counter_ns()
                done.set()

        await queue.consume(on_task)
        processes.report("ready")
        await done.wait()
        return stamps[0], stamps[1]


async def raw_streams(options: argparse.Namespace) -> tuple[int, int]:
    async with clients.redis() as redis:
        processes.report("ready")
        first, count = 0, 0
        while count < options.count:
            read = await redis.xreadgroup(  # as the worker: a read's entries, one commit
                options.group, "raw", {options.tasks: ">"}, count=int(PREFETCH), block=1_000
            )
            for _, entries in read:
                ids = [entry_id for entry_id, _ in entries]
                async with redis.pipeline(transaction=True) as pipe:
                    for _, fields in entries:
                        task = json.loads(fields[b"task"])
                        first = first or time.perf_counter_ns()
                        pipe.xadd(options.reports, {"report": raw_result(task)}, maxlen=100_000)
                    pipe.xack(options.tasks, options.group, *ids)
                    pipe.xdel(options.tasks, *ids)
                    await pipe.execute()
                count += len(entries)
        return first, time.perf_counter_ns()


async def raw_main(options: argparse.Namespace) -> None:
    loop = {"zmq": raw_zmq, "amqp": raw_amqp, "streams": raw_streams}[options.transport]
    first, last = await loop(options)
    processes.report("result", tasks=options.count, seconds=(last - first) / 1e9)


# ---- the rounds -------------------------------------------------------------------------


async def one_worker(transport: str, alphabet: str, max_length: int, tasks: int) -> dict[str, Any]:
    """Our worker on a real job, alone: its own tally (hashed, seconds first -> last task).

    With AMQP and Streams the producer has queued the whole job (its window made wide
    enough) before the worker starts, so its publishing, and the broker storing it, do not
    share the two cores with the worker being measured; the whole job, producer included,
    is what the speedup times. A ZeroMQ producer has no broker to queue in: it runs beside
    the worker.
    """
    channels = unique(transport, "bench")
    mine = ("--transport", transport)
    job = (*job_options(alphabet, max_length), "--window", str(tasks))
    try:
        async with processes.children() as started:
            collector = await processes.start(
                "patterns.tasks", "collector", *mine, *channels.options()
            )
            started.append(collector)
            if transport == "zmq":
                sink = collector.ready
                channels = Channels(
                    "tcp://127.0.0.1:0", sink["results"], sink["control"], sink["reports"]
                )
            producer = await processes.start(
                "patterns.tasks", "producer", *mine, *channels.options(), *job
            )
            started.append(producer)
            if transport == "zmq":
                channels = Channels(
                    producer.ready["endpoint"], channels.results, channels.control, channels.reports
                )
            else:
                await producer.next_report("result")  # every task waits in the broker
            options = ("--name", "w1", "--exit-after", str(tasks))
            options += ("--prefetch", PREFETCH) if transport != "zmq" else ()
            worker = await processes.start(
                "patterns.tasks", "worker", *mine, *channels.options(), *options
            )
            started.append(worker)
            return await worker.next_report("result")
    finally:
        await admin.delete(transport, channels)


async def plain_round(
    alphabet: str, max_length: int, loops: int = 0, sha1: str = "hashlib"
) -> dict[str, Any]:
    """The plain loop in a child; or `loops` of them at once, each in a process of its own."""
    options = ("--alphabet", alphabet, "--max-length", str(max_length), "--sha1", sha1)
    async with processes.children() as started:
        child = await processes.start(__name__, "plain", *options, "--together", str(loops))
        started.append(child)
        return await child.next_report("result")


async def job_seconds(transport: str, alphabet: str, max_length: int, workers: int) -> float:
    channels = unique(transport, "bench")
    try:
        result = await crack(
            transport,
            channels,
            search_hash=NOWHERE,
            alphabet=alphabet,
            max_length=max_length,
            workers=workers,
            worker_options=("--prefetch", PREFETCH) if transport != "zmq" else (),
        )
    finally:
        await admin.delete(transport, channels)
    assert result["complete"] and result["ledger"]["lost"] == 0
    return result["seconds"]


async def empty_tasks(transport: str, channels: Channels, count: int) -> None:
    """Queue `count` tasks with nothing to hash (amqp, streams), 500 at a time."""
    if transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await amqp.declare(channel, channels)
            for start in range(0, count, 500):
                size = min(500, count - start)
                await asyncio.gather(
                    *(amqp.publish(channel, channels.tasks, EMPTY_TASK) for _ in range(size))
                )
    else:
        async with clients.redis() as redis:
            await streams.ensure_group(redis, channels.tasks, channels.group)
            for start in range(0, count, 500):
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(min(500, count - start)):
                        pipe.xadd(channels.tasks, {"task": EMPTY_TASK})
                    await pipe.execute()


async def overhead_round(transport: str, count: int, ours: bool) -> float:
    """Tasks/s of our worker (or the raw loop) on `count` empty tasks."""
    channels = unique(transport, "bench")
    context = zmq.asyncio.Context()
    try:
        async with processes.children() as started:
            if transport == "zmq":
                kinds = (zmq.PUSH, zmq.PULL, zmq.PUB, zmq.PULL)
                tasks, results, control, reports = (context.socket(k) for k in kinds)
                sockets = (tasks, results, control, reports)
                channels = Channels(*(s.bind("tcp://127.0.0.1:0").addr for s in sockets))
            else:
                await empty_tasks(transport, channels, count)
            options = ("--transport", transport, *channels.options())
            if ours:
                extra = ("--prefetch", PREFETCH) if transport != "zmq" else ()
                child = await processes.start(
                    "patterns.tasks", "worker", *options, "--name", "w1",
                    "--exit-after", str(count), *extra,
                )  # fmt: skip
            else:
                child = await processes.start(__name__, "raw", *options, "--count", str(count))
            started.append(child)
            if transport == "zmq":

                async def drain() -> None:
                    while True:
                        await reports.recv()

                draining = asyncio.create_task(drain())
                for _ in range(count):
                    await tasks.send(EMPTY_TASK)
            result = await child.next_report("result")
            if transport == "zmq":
                draining.cancel()
        return result["tasks"] / result["seconds"]
    finally:
        context.destroy(linger=0)
        await admin.delete(transport, channels)


async def swapping(
    rounds: int, first: Callable[[], Awaitable[T]], second: Callable[[], Awaitable[T]]
) -> tuple[list[T], list[T]]:
    """`rounds` measurements of each side, one pair per round, taken first-second in even
    rounds and second-first in odd ones."""
    firsts: list[T] = []
    seconds: list[T] = []
    for n in range(rounds):
        if n % 2:
            seconds.append(await second())
            firsts.append(await first())
        else:
            firsts.append(await first())
            seconds.append(await second())
    return firsts, seconds


async def measure(transport: str, quick: bool) -> dict[str, Any]:
    rounds = ROUNDS[quick]
    alphabet = ALPHABETS[quick]
    max_length = MAX_LENGTH
    tasks = -(-search_space(len(alphabet), max_length) // 10_000)
    ours_rates, same_ratios, hashlib_ratios, cpu_ratios = [], [], [], []
    chosen = set()  # the SHA-1 the worker hashed with, each round
    for _ in range(rounds):
        worker = await one_worker(transport, alphabet, max_length, tasks)
        chosen.add(worker["sha1"])
        ours_rates.append(worker["hashed"] / worker["seconds"])
        same = await plain_round(alphabet, max_length, sha1=worker["sha1"])
        same_ratios.append(ours_rates[-1] / (same["hashed"] / same["seconds"]))
        reference = await plain_round(alphabet, max_length)
        hashlib_ratios.append(ours_rates[-1] / (reference["hashed"] / reference["seconds"]))
        # per CPU second: what the worker costs, whatever else the machine was doing
        cpu_ratios.append(same["cpu_seconds"] / worker["cpu_seconds"])
    # the speedup needs a job long against its fixed costs (start, last stragglers)
    speedup_alphabet = alphabet if quick else ALPHABET  # full: 12,356,630 candidates
    job = functools.partial(job_seconds, transport, speedup_alphabet, max_length)
    one, two = await swapping(rounds, lambda: job(1), lambda: job(2))
    speedups = [a / b for a, b in zip(one, two, strict=True)]
    count = EMPTY_TASKS[transport] // (4 if quick else 1)
    empty = functools.partial(overhead_round, transport, count)
    ours_tasks, raw_tasks = await swapping(
        OVERHEAD_ROUNDS[quick], lambda: empty(ours=True), lambda: empty(ours=False)
    )
    overhead_ratios = [a / b for a, b in zip(ours_tasks, raw_tasks, strict=True)]
    median = statistics.median
    overhead = {
        "idiomatic_tasks_per_s": round(median(ours_tasks)),
        "fast_tasks_per_s": None,  # no `_fast` worker: none paid 1.5x on this workload
        "raw_tasks_per_s": round(median(raw_tasks)),
        "idiomatic_ratio": round(median(overhead_ratios), 3),
        "ratio": round(median(overhead_ratios), 3),
        "ratio_of": "idiomatic",
    }
    result = {
        "candidates": search_space(len(alphabet), max_length),
        "worker_hashes_per_s": round(median(ours_rates)),
        "worker_sha1": "/".join(sorted(chosen)),
        "hash_ratio": round(median(same_ratios), 3),
        "hash_ratio_hashlib": round(median(hashlib_ratios), 3),
        "hash_ratio_per_cpu_s": round(median(cpu_ratios), 3),
        "speedup_candidates": search_space(len(speedup_alphabet), max_length),
        "job_s_1_worker": round(median(one), 3),
        "job_s_2_workers": round(median(two), 3),
        "speedup": round(median(speedups), 3),
        "overhead": overhead,
        "overhead_ratio": overhead["ratio"],
    }
    result["meets_targets"] = all(result[k] >= v for k, v in TARGETS.items())
    return result


async def ceiling(quick: bool) -> dict[str, Any]:
    """Two plain loops at once against one, alternating: the most two workers could give.

    On a virtual machine the two cores may share one physical core's execution units (or
    a busy host's), so two CPU-bound processes need not run twice as fast as one.
    """

    async def loops(count: int) -> float:
        return (await plain_round(ALPHABETS[quick], MAX_LENGTH, loops=count))["hashes_per_s"]

    one, two = await swapping(ROUNDS[quick], lambda: loops(1), lambda: loops(2))
    ratios = [b / a for a, b in zip(one, two, strict=True)]
    return {
        "one_loop_hashes_per_s": round(statistics.median(one)),
        "two_loops_hashes_per_s": round(statistics.median(two)),
        "speedup": round(statistics.median(ratios), 3),
    }


async def run(quick: bool) -> dict:
    machine = await ceiling(quick)
    results = {transport: await measure(transport, quick) for transport in TRANSPORTS}
    return {
        "rounds": ROUNDS[quick],
        "overhead_rounds": OVERHEAD_ROUNDS[quick],
        "targets": TARGETS,
        "plain_loops": machine,
        **results,
        "meets_targets": all(r["meets_targets"] for r in results.values()),
    }


def main() -> None:
    parser = cli.Parser(
        prog="python -m patterns.bench.tasks", description="the tasks benchmark's reference loops"
    )
    roles = parser.roles()
    raw = roles.add_parser("raw", help="the raw client loop on empty tasks")
    raw.add_argument("--transport", choices=TRANSPORTS, required=True)
    for name in ("tasks", "results", "control", "reports", "dead", "group"):
        raw.add_argument(f"--{name}")
    raw.add_argument("--count", type=int, required=True)
    plain_loop = roles.add_parser("plain", help="the plain hashing loop")
    plain_loop.add_argument("--alphabet", required=True)
    plain_loop.add_argument("--max-length", type=int, required=True)
    plain_loop.add_argument("--together", type=int, default=0, help="loops at once, forked")
    plain_loop.add_argument("--sha1", choices=SHA1S, default="hashlib", help="which SHA-1")
    options = parser.parse_args()
    if options.role == "plain":
        processes.report("ready")
        words = (options.alphabet, options.max_length, 10_000)
        if options.together:
            processes.report("result", **together(options.together, *words))
        else:
            processes.report("result", **plain(*words, options.sha1))
    else:
        cli.run(raw_main(options), "raw")


if __name__ == "__main__":
    main()
