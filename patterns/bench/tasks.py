"""Hashsum cracker: a worker's hashes/s vs plain hashlib, 2-vs-1-worker speedup, per-task overhead.

Per transport (zmq, amqp, streams), three comparisons, each made of rounds that alternate
the two sides (so the load of a shared machine falls on both alike) and summarised by
the median of the per-round ratios. In the speedup's and the overhead's rounds, and the
ceiling's, the two sides swap places every other round (one, two; then two, one): this
machine's speed drifts by more than the targets' margins over a round of 10-15 s, and
a drift then favours each side in half the rounds instead of one side in all of them.

* hashing: one worker cracks a job whose word is not in the space (every candidate is
  hashed), measured inside the worker from its first task to its last (with AMQP and
  Streams the job is queued in the broker before the worker starts); against a plain
  loop, in a process of its own, hashing the very same candidate words, ready-made, with
  `hashlib.sha1(word).digest() == target` (only the loop is timed). Target: ratio >= 0.9.
  The same ratio per CPU second (`hash_ratio_per_cpu_s`) is given too: on a busy machine
  the worker shares the cores with the broker and the collector, the plain loop does not.
  And the worker against the plain loop with the SHA-1 the worker chose (`worker_sha1`:
  OpenSSL's or CPython's own, whichever runs the kernel faster on this machine, see
  patterns.tasks.space), `hash_ratio_same_sha1`: with the hash function the same on both
  sides, what is left is what the rest of the worker costs.
* speedup: a job's wall time (the collector's, from the job's announcement to its last
  report) with one worker, over its time with two; the full run's job is every word of up
  to five letters (12,356,630 candidates). Target on 2 cores: >= 1.7.
* overhead: one worker's tasks/s on empty tasks (nothing to hash: all messaging), against
  a raw loop with the same client doing the same messaging (take the task, decode it,
  publish a result with the fields of the worker's report, ack), batched as the worker
  batches it (AMQP: prefetch 10, one message of results and one ack frame per 5 tasks;
  Streams: 10 entries per read, one MULTI/EXEC per read; ZeroMQ: a task already there is
  taken without an asyncio future), so the ratio is the cost of our code, not of a
  different protocol use. Target: ratio >= 0.9. Its rounds are short (1-4 s), so there
  are more of them (`overhead_rounds`).

Before them, the machine's own ceiling for the speedup (`plain_loops`): two plain loops at
once, each a process, against one (their hashes/s summed), rounds alternating likewise.

The raw loop and the plain loop are this module's children: `python -m
patterns.bench.tasks raw|plain ...`.
"""

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

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from patterns import amqpio, config, processes
from patterns.tasks import amqp, streams, wire, zeromq
from patterns.tasks.job import TRANSPORTS, Channels, unique
from patterns.tasks.run import cleanup, crack
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
    """What the worker reports for an empty task, the same fields and as many bytes, put
    together the plain way: the broker stores and carries as much for either side."""
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
        zeromq.bound(pull, zeromq.HWM)  # as the worker's, by default
        pull.connect(options.tasks)
        push.connect(options.results)
        ready = zeromq.shadow(pull)  # its synchronous twin
        processes.report("ready")
        first = 0
        for _ in range(options.count):
            task = json.loads(await zeromq.receive(pull, ready))  # as the worker takes it
            first = first or time.perf_counter_ns()
            await push.send(raw_result(task))
        return first, time.perf_counter_ns()
    finally:
        context.destroy(linger=1_000)


async def raw_amqp(options: argparse.Namespace) -> tuple[int, int]:
    connection = await amqpio.connect(config.AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=int(PREFETCH))
        done = asyncio.Event()
        stamps = [0, 0, 0]  # first, last, count
        # as the worker: one message of results, then one ack frame, per half a prefetch
        every = int(PREFETCH) // 2
        lines: list[bytes] = []

        def ack(tag: int, last: bool, ok: bool) -> None:
            if not ok:
                return
            channel.basic_ack(tag, multiple=True)  # confirmed: every task up to this tag
            if last:
                stamps[1] = time.perf_counter_ns()
                done.set()

        def on_task(message: amqpio.Delivery) -> None:
            task = json.loads(message.body)
            stamps[0] = stamps[0] or time.perf_counter_ns()
            lines.append(raw_result(task))
            stamps[2] += 1
            last = stamps[2] == options.count
            if len(lines) < every and not last:
                return
            body, lines[:] = b"\n".join(lines), []
            channel.basic_publish(  # acked as the confirm is read, as the worker does
                body,
                routing_key=options.results,
                properties=amqp.persistent(),
                on_confirm=functools.partial(ack, message.delivery_tag, last),
            )

        await channel.basic_consume(options.tasks, on_task)
        processes.report("ready")
        await done.wait()
        return stamps[0], stamps[1]
    finally:
        await connection.close()


async def raw_streams(options: argparse.Namespace) -> tuple[int, int]:
    client = aioredis.from_url(config.REDIS_URL)
    try:
        processes.report("ready")
        first, count = 0, 0
        while count < options.count:
            read = await client.xreadgroup(  # as the worker: a read's entries, one commit
                options.group, "raw", {options.tasks: ">"}, count=int(PREFETCH), block=1_000
            )
            for _, entries in read:
                async with client.pipeline(transaction=True) as pipe:
                    for _, fields in entries:
                        task = json.loads(fields[b"task"])
                        first = first or time.perf_counter_ns()
                        pipe.xadd(options.results, {"result": raw_result(task)}, maxlen=100_000)
                    pipe.xack(options.tasks, options.group, *(entry_id for entry_id, _ in entries))
                    await pipe.execute()
                count += len(entries)
        return first, time.perf_counter_ns()
    finally:
        await client.aclose()


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
                channels = Channels(
                    "tcp://127.0.0.1:0", collector.ready["results"], collector.ready["control"]
                )
            producer = await processes.start(
                "patterns.tasks", "producer", *mine, *channels.options(), *job
            )
            started.append(producer)
            if transport == "zmq":
                channels = Channels(producer.ready["endpoint"], channels.results, channels.control)
            else:
                await producer.next_report("result")  # every task waits in the broker
            worker = await processes.start(
                "patterns.tasks",
                "worker",
                *mine,
                *channels.options(),
                "--name",
                "w1",
                "--exit-after",
                str(tasks),
                "--prefetch",
                PREFETCH,
            )
            started.append(worker)
            return await worker.next_report("result")
    finally:
        await cleanup(transport, channels)


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
            worker_options=("--prefetch", PREFETCH),
        )
    finally:
        await cleanup(transport, channels)
    assert result["complete"] and result["ledger"]["lost"] == 0
    return result["seconds"]


async def empty_tasks(transport: str, channels: Channels, count: int) -> None:
    """Queue `count` tasks with nothing to hash (amqp, streams)."""
    bodies = [EMPTY_TASK] * count
    if transport == "amqp":
        connection = await amqpio.connect(config.AMQP_URL)
        try:
            channel = await connection.channel()
            await amqp.declare(channel, channels)
            for start in range(0, count, 500):
                await asyncio.gather(
                    *(
                        channel.basic_publish(
                            b, routing_key=channels.tasks, properties=amqp.persistent()
                        )
                        for b in bodies[start : start + 500]
                    )
                )
        finally:
            await connection.close()
    else:
        client = aioredis.from_url(config.REDIS_URL)
        try:
            await streams.ensure_group(client, channels.tasks, channels.group)
            for start in range(0, count, 500):
                async with client.pipeline(transaction=False) as pipe:
                    for body in bodies[start : start + 500]:
                        pipe.xadd(channels.tasks, {"task": body})
                    await pipe.execute()
        finally:
            await client.aclose()


async def overhead_round(transport: str, count: int, ours: bool) -> float:
    """Tasks/s of our worker (or the raw loop) on `count` empty tasks."""
    channels = unique(transport, "bench")
    context = zmq.asyncio.Context()
    try:
        async with processes.children() as started:
            if transport == "zmq":
                tasks, sink, control = (context.socket(t) for t in (zmq.PUSH, zmq.PULL, zmq.PUB))
                endpoints = [s.bind("tcp://127.0.0.1:0").addr for s in (tasks, sink, control)]
                channels = Channels(*endpoints)
            else:
                await empty_tasks(transport, channels, count)
            options = ("--transport", transport, *channels.options())
            if ours:
                child = await processes.start(
                    "patterns.tasks",
                    "worker",
                    *options,
                    "--name",
                    "w1",
                    "--exit-after",
                    str(count),
                    "--prefetch",
                    PREFETCH,
                )
            else:
                child = await processes.start(__name__, "raw", *options, "--count", str(count))
            started.append(child)
            if transport == "zmq":

                async def drain() -> None:
                    while True:
                        await sink.recv()

                draining = asyncio.create_task(drain())
                for _ in range(count):
                    await tasks.send(EMPTY_TASK)
            result = await child.next_report("result")
            if transport == "zmq":
                draining.cancel()
        return result["tasks"] / result["seconds"]
    finally:
        context.destroy(linger=0)
        await cleanup(transport, channels)


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
    hash_ratios, ours_rates, plain_rates, cpu_ratios, same_ratios = [], [], [], [], []
    chosen = set()  # the SHA-1 the worker hashed with, each round
    for _ in range(rounds):
        worker = await one_worker(transport, alphabet, max_length, tasks)
        reference = await plain_round(alphabet, max_length)
        chosen.add(worker["sha1"])
        ours_rates.append(worker["hashed"] / worker["seconds"])
        plain_rates.append(reference["hashed"] / reference["seconds"])
        hash_ratios.append(ours_rates[-1] / plain_rates[-1])
        same = await plain_round(alphabet, max_length, sha1=worker["sha1"])
        same_ratios.append(ours_rates[-1] / (same["hashed"] / same["seconds"]))
        # per CPU second: what the worker costs, whatever else the machine was doing
        cpu_ratios.append(reference["cpu_seconds"] / worker["cpu_seconds"])
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
    result = {
        "candidates": search_space(len(alphabet), max_length),
        "worker_hashes_per_s": round(median(ours_rates)),
        "plain_hashes_per_s": round(median(plain_rates)),
        "hash_ratio": round(median(hash_ratios), 3),
        "hash_ratio_per_cpu_s": round(median(cpu_ratios), 3),
        "hash_ratio_same_sha1": round(median(same_ratios), 3),
        "worker_sha1": "/".join(sorted(chosen)),
        "speedup_candidates": search_space(len(speedup_alphabet), max_length),
        "job_s_1_worker": round(median(one), 3),
        "job_s_2_workers": round(median(two), 3),
        "speedup": round(median(speedups), 3),
        "empty_tasks_per_s": round(median(ours_tasks)),
        "raw_tasks_per_s": round(median(raw_tasks)),
        "overhead_ratio": round(median(overhead_ratios), 3),
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
    parser = argparse.ArgumentParser(description="the reference loops of the tasks benchmark")
    parser.add_argument("loop", choices=("raw", "plain"))
    parser.add_argument("--transport", choices=TRANSPORTS)
    for name in ("tasks", "results", "control", "dead", "group"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--count", type=int)
    parser.add_argument("--alphabet")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--together", type=int, default=0, help="plain: loops at once, forked")
    parser.add_argument("--sha1", choices=SHA1S, default="hashlib", help="plain: which SHA-1")
    options = parser.parse_args()
    if options.loop == "plain":
        processes.report("ready")
        words = (options.alphabet, options.max_length, 10_000)
        if options.together:
            processes.report("result", **together(options.together, *words))
        else:
            processes.report("result", **plain(*words, options.sha1))
    else:
        processes.run(raw_main(options))


if __name__ == "__main__":
    main()
