"""What a worker does with one task, whatever carried it: the transports only move bytes.

`Worker.process(body, attempts)` decodes the task, hashes it and says what to publish: the
book's `Found: <word>` if the word is in the batch, and our report (`done`, or `dead`
with the reason if the task is set aside). It never raises for a bad task: whatever is
wrong with the bytes, the bounds or the hashing itself ends as a dead letter, and the
worker goes on with the next one.

Hashing is CPU-bound and the worker is a process of its own, so it uses one core. It still
runs an event loop beside the hashing, to keep its broker connection alive (heartbeats,
reconnects, acks), hear that the word was found elsewhere and stop on SIGTERM. So a task
is hashed in slices of `SLICE` candidates (a few milliseconds each) with a turn of the
loop before each; a slice boundary is also where a found word stops the hashing, and
where a task that has run for longer than `budget_s` is given up ("too long").
"""

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from patterns.messages import MalformedMessage
from patterns.tasks import wire
from patterns.tasks.space import crack, index_of, word_sha1

SLICE = 10_000  # candidates between two turns of the event loop: a few ms of hashing
REMEMBERED = 1_000  # cracked hashes a worker keeps, to skip the rest of their tasks
MAX_ATTEMPTS = 5  # deliveries of one task before it is set aside as a dead letter
BUDGET_S = 60.0  # a task still hashing after this long is given up

log = logging.getLogger("patterns.tasks.worker")


class TooLong(Exception):
    pass


@dataclass
class Outcome:
    """What to publish for one task: the book's result if found, and our report."""

    report: bytes
    found: str | None = None  # the word, if this task holds it
    dead: wire.Dead | None = None  # set aside, and why

    @property
    def result(self) -> bytes | None:
        """The book's `Found: <word>`, for the results channel."""
        return None if self.found is None else wire.found(self.found)


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
    def __init__(
        self, name: str, max_attempts: int = MAX_ATTEMPTS, budget_s: float = BUDGET_S
    ) -> None:
        self.name = name
        self.max_attempts = max_attempts
        self.budget_s = budget_s
        self.cracked: OrderedDict[str, str] = OrderedDict()  # searchHash -> word
        self.tally = Tally()
        word_sha1()  # which SHA-1 to hash with, timed now rather than during the first task

    def learn(self, data: bytes) -> None:
        """A notice from the control channel: skip what is left of a cracked hash."""
        try:
            notice = wire.decode_report(data)
        except MalformedMessage:
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
        deadline = time.monotonic() + self.budget_s
        hashed = 0
        for start in range(task.batch_start, task.batch_end + 1, SLICE):
            await asyncio.sleep(0)  # the loop's turn: I/O, heartbeats, notices, a cancel
            if task.search_hash in self.cracked:
                return None, hashed, True
            if time.monotonic() > deadline:
                raise TooLong(f"too long: still hashing after {self.budget_s:g} s")
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
        return Outcome(wire.encode(dead), dead=dead)

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
        try:
            word, hashed, skipped = await self.hash_task(task)
        except TooLong as error:
            return self.set_aside(str(error), attempts, task)
        except Exception as error:  # a bug must not take the worker down with the task
            log.exception("hashing failed")
            return self.set_aside(f"the worker failed: {error!r:.200}", attempts, task)
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
        if word is not None:
            log.info("found %r in %d..%d", word, task.batch_start, task.batch_end)
            self._remember(task.search_hash, word)
            self.tally.found.append(word)
        self.tally.tasks += 1
        self.tally.hashed += hashed
        self.tally.skipped += skipped
        self.tally.last_ns = time.perf_counter_ns()
        return Outcome(wire.encode(done), found=word)
