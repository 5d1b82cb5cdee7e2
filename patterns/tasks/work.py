"""What a worker does with one task, whatever carried it: the transports only move bytes.

Hashing is CPU-bound and the worker is a process of its own, so it uses one core fully.
It still runs an event loop beside the hashing: it must keep its broker connection alive
(AMQP heartbeats, reconnects), hear that the word was found elsewhere, and stop cleanly
on SIGTERM. So a task is hashed in slices of `SLICE` candidates (a task of the book's
batch size is one slice, a few milliseconds), with a return to the event loop before
each slice. A thread would not help here: hashlib keeps the GIL for inputs this
short (it lets go only above 2 KiB), so a hashing thread would not run beside the loop
anyway, and it would cost a hop per task and a stop flag of its own; a slice boundary
is also where a found word stops the hashing.

A return to the loop is `LOOP_TURNS` turns of it, not one. What arrived while the worker
hashed takes a few turns to be dealt with: an AMQP confirm is read from the socket in one
turn, where it settles the acks it allows, and the ack frame goes out in the next, when
the socket is writable; the deliveries that ack lets the broker send come in later turns.
An AMQP worker that turned the loop only between the slices of a task (never, for a task
of one slice) learned of its confirms tasks late, acked late, and ran out of deliveries
with prefetch 10: in a job of 337 tasks (2-3 s) it waited for them 0.25-0.36 s in all;
with one turn before each slice 0.18-0.22 s, with two 0.12 s, with four not at all
(measured with aiormq, whose confirms took more turns than they take now). A turn with
nothing to do costs a few microseconds; a slice, milliseconds.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from patterns.tasks import wire
from patterns.tasks.space import crack, index_of, word_sha1

SLICE = 10_000  # candidates per slice: 2-8 ms of hashing here between two looks at the loop
REMEMBERED = 1_000  # cracked hashes a worker keeps, to skip the rest of their tasks
MAX_ATTEMPTS = 5  # deliveries of one task before it is set aside as a dead letter
LOOP_TURNS = 4  # turns of the event loop before each slice (see above)

log = logging.getLogger("patterns.tasks.worker")


@dataclass
class Outcome:
    """What to publish on the results channel, in order; `dead` if the task is set aside."""

    results: list[bytes]
    dead: wire.Dead | None = None
    found: str | None = None  # the word, if this task holds it


@dataclass
class Tally:
    """What this worker did, for its final report."""

    tasks: int = 0
    hashed: int = 0
    skipped: int = 0
    dead: int = 0
    first_ns: int = 0
    last_ns: int = 0
    first_cpu_ns: int = 0
    found: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The tally, with the CPU time used since the first task (read now, once: reading the
        CPU clock is a system call, too dear to make per task)."""
        seconds = (self.last_ns - self.first_ns) / 1e9
        return {
            "tasks": self.tasks,
            "hashed": self.hashed,
            "skipped": self.skipped,
            "dead": self.dead,
            "found": self.found,
            "seconds": round(seconds, 6),
            "cpu_seconds": round((time.process_time_ns() - self.first_cpu_ns) / 1e9, 6),
            "sha1": word_sha1(),  # which SHA-1 it hashed with (space.SHA1S)
        }


class Worker:
    def __init__(self, name: str, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.name = name
        self.max_attempts = max_attempts
        self.cracked: OrderedDict[str, str] = OrderedDict()  # searchHash -> word
        self.tally = Tally()
        word_sha1()  # which SHA-1 to hash with, timed now rather than during the first task

    def learn(self, data: bytes) -> None:
        """A notice from the control channel: skip what is left of a cracked hash."""
        try:
            notice = wire.decode(data)
        except ValueError:
            log.warning("ignored a control message that is not a notice: %r", data[:60])
            return
        if isinstance(notice, wire.Cracked):
            self._remember(notice.searchHash, notice.word)

    def _remember(self, search_hash: str, word: str) -> None:
        if search_hash not in self.cracked:
            log.info("%s is cracked (%r): skipping the rest of its tasks", search_hash, word)
        self.cracked[search_hash] = word
        self.cracked.move_to_end(search_hash)
        while len(self.cracked) > REMEMBERED:
            self.cracked.popitem(last=False)

    async def hash_task(self, task: wire.Task) -> tuple[str | None, int, bool]:
        """(word or None, candidates hashed, skipped?), one slice at a time."""
        digest = bytes.fromhex(task.search_hash)
        hashed = 0
        for start in range(task.batch_start, task.batch_end + 1, SLICE):
            for _ in range(LOOP_TURNS):  # the loop's turn: I/O, heartbeats, notices, cancel
                await asyncio.sleep(0)
            if task.search_hash in self.cracked:
                return None, hashed, True
            end = min(start + SLICE - 1, task.batch_end)
            word = crack(digest, task.alphabet, start, end)
            if word is not None:
                return word, hashed + index_of(word, task.alphabet) - start + 1, False
            hashed += end - start + 1
        return None, hashed, False

    def set_aside(self, reason: str, attempts: int, task: wire.Task | None = None) -> Outcome:
        log.warning("dead letter after %d deliveries: %s", attempts, reason)
        dead = wire.Dead(self.name, reason, attempts)
        if task is not None:
            dead = wire.Dead(
                self.name, reason, attempts, task.job, task.search_hash, task.batch_start
            )
        self.tally.dead += 1
        return Outcome([wire.encode(dead)], dead)

    async def process(self, data: bytes, attempts: int = 1) -> Outcome:
        """Hash one task (its `attempts`-th delivery) and say what to publish."""
        if not self.tally.first_ns:
            self.tally.first_ns = time.perf_counter_ns()
            self.tally.first_cpu_ns = time.process_time_ns()
        try:
            task = wire.decode_task(data)
        except wire.MalformedTask as error:
            return self.set_aside(str(error), attempts)
        if attempts > self.max_attempts:
            reason = f"delivered {attempts} times, more than {self.max_attempts}: never finished"
            return self.set_aside(reason, attempts, task)
        word, hashed, skipped = await self.hash_task(task)
        done = wire.Done(
            self.name,
            task.job,
            task.search_hash,
            task.batch_start,
            task.batch_end,
            hashed,
            word,
            skipped,
            attempts,
        )
        results = [wire.encode(done)]
        if word is not None:
            log.info("found %r in %d..%d", word, task.batch_start, task.batch_end)
            self._remember(task.search_hash, word)
            self.tally.found.append(word)
            results.insert(0, wire.found(word))  # the book's result, for any collector
        self.tally.tasks += 1
        self.tally.hashed += hashed
        self.tally.skipped += skipped
        self.tally.last_ns = time.perf_counter_ns()
        return Outcome(results, found=word)
