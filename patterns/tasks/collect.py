"""The collector's bookkeeping, whatever the transport: is the job done, and what became of
every task?

It reads the results channel: the producer's `job` and `sent` reports, each worker's
`done` or `dead` report, and `Found: <word>` texts (from our workers or the book's). Each
task is numbered by its place in the job, (batchStart - 1) / batchSize, and recorded in a
`DeliveryLedger` when a worker reports it done or dead, so at the end every task the
producer sent is accounted for: done once, done twice (a redelivery after the first
worker had already reported it: the answer is the same, it is counted once), or lost.

A job is complete when the producer has said how many tasks it sent and each of them has
been reported. Until the `job` report arrives (a fast worker can overtake it on another
connection) reports are kept aside; reports of another job are counted and ignored.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from patterns.measure import DeliveryLedger
from patterns.messages import MalformedMessage
from patterns.tasks import wire
from patterns.tasks.space import index_of

log = logging.getLogger("patterns.tasks.collector")


class Tracker:
    def __init__(self) -> None:
        self.job: wire.Job | None = None
        self.sent: int | None = None
        self.ledger = DeliveryLedger()
        self.accounted: set[int] = set()
        self._sent_accounted = 0  # how many of the tasks numbered below `sent` are accounted
        self.early: list[wire.Done | wire.Dead] = []  # arrived before their job report
        self.word: str | None = None
        self.found_ns = 0
        self.started_ns = time.perf_counter_ns()
        self.tasks_by_worker: Counter[str] = Counter()  # tasks hashed (not skipped)
        self.last_by_worker: dict[str, int] = {}  # when each worker's last report came, ns
        self.hashed = 0
        self.skipped = 0
        self.duplicates = 0
        self.retried = 0  # tasks first reported after a redelivery (a worker died holding them)
        self.dead: list[wire.Dead] = []  # every dead report seen: malformed tasks too
        self.dead_tasks = 0  # tasks of this job set aside
        self.malformed = 0
        self.foreign = 0  # reports of another job: leftovers on a reused channel

    @property
    def complete(self) -> bool:
        return self.sent is not None and self._sent_accounted >= self.sent

    def take(self, data: bytes) -> wire.Cracked | None:
        """Record one message from the results channel; a notice to broadcast if it found."""
        try:
            message = wire.decode(data)
        except MalformedMessage as error:
            self.malformed += 1
            log.warning("ignored: %s", error)
            return None
        if isinstance(message, str):
            return self._found(message)
        if isinstance(message, wire.Job):
            if self.job is None:
                self.job = message
                self.started_ns = time.perf_counter_ns()
                log.info("job %s: %d tasks", message.job, message.tasks)
                early, self.early = self.early, []
                for report in early:
                    self._record(report)
            return None
        if isinstance(message, wire.Sent):
            if self.job is not None and message.job == self.job.job:
                self.sent = message.tasks
                self._sent_accounted = sum(seq < message.tasks for seq in self.accounted)
            return None
        if isinstance(message, wire.Done | wire.Dead):
            notice = self._found(message.found) if isinstance(message, wire.Done) else None
            if isinstance(message, wire.Dead):
                self.dead.append(message)  # whichever job (or none) it belonged to
            if self.job is None:
                self.early.append(message)
            else:
                self._record(message)
            return notice
        return None

    def _found(self, word: str | None) -> wire.Cracked | None:
        if word is None or self.word is not None:
            return None
        search_hash = wire.sha1_hex(word)
        if self.job is not None and search_hash != self.job.searchHash:
            self.foreign += 1
            return None
        self.word, self.found_ns = word, time.perf_counter_ns()
        log.info("found %r after %.3f s", word, self.seconds(self.found_ns))
        return wire.Cracked(search_hash, word, self.job.job if self.job else None)

    def _record(self, report: wire.Done | wire.Dead) -> None:
        assert self.job is not None
        if report.job != self.job.job or report.batchStart is None:
            self.foreign += 1
            return
        seq, misaligned = divmod(report.batchStart - 1, self.job.batchSize)
        if misaligned:
            self.foreign += 1
            return
        self.ledger.record(self.job.job, seq)
        if seq in self.accounted:
            self.duplicates += 1
            return
        self.accounted.add(seq)
        if self.sent is not None and seq < self.sent:
            self._sent_accounted += 1
        if isinstance(report, wire.Dead):
            self.dead_tasks += 1
        elif report.skipped:
            self.skipped += 1
        else:
            self.tasks_by_worker[report.worker] += 1
            self.last_by_worker[report.worker] = time.perf_counter_ns()
            self.hashed += report.hashed
        if isinstance(report, wire.Done) and report.attempts > 1:
            self.retried += 1

    def seconds(self, now_ns: int | None = None) -> float:
        return ((now_ns or time.perf_counter_ns()) - self.started_ns) / 1e9

    def result(self) -> dict[str, Any]:
        job = self.job
        sent = self.sent if self.sent is not None else (job.tasks if job else 0)
        ledger = self.ledger.report({job.job: sent} if job else {})
        return {
            "job": job.job if job else None,
            "word": self.word,
            "index": index_of(self.word, job.alphabet) if self.word and job else None,
            "seconds_to_word": round(self.seconds(self.found_ns), 3) if self.word else None,
            "seconds": round(self.seconds(), 3),
            "complete": self.complete,
            "tasks": sent,
            "hashed_tasks": sum(self.tasks_by_worker.values()),
            "skipped": self.skipped,
            "dead_tasks": self.dead_tasks,
            "dead": [vars_of(d) for d in self.dead],
            "candidates": self.hashed,
            "workers": dict(sorted(self.tasks_by_worker.items())),
            # the first worker to finish idles from its last report to the job's end
            "last_report_s": {
                name: round(self.seconds(ns), 3) for name, ns in sorted(self.last_by_worker.items())
            },
            "duplicates": self.duplicates,
            "retried": self.retried,
            "malformed": self.malformed,
            "foreign": self.foreign,
            "ledger": vars(ledger),
        }


def vars_of(report: wire.Dead) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


class Windows:
    """Tasks/s in the last window, overall and per worker: the collector's "stats" reports."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.previous: Counter[str] = Counter()
        self.previous_ns = time.perf_counter_ns()

    def stats(self) -> dict[str, Any]:
        now_ns = time.perf_counter_ns()
        elapsed = max(1, now_ns - self.previous_ns) / 1e9
        current = Counter(self.tracker.tasks_by_worker)
        rates = {w: round((current[w] - self.previous[w]) / elapsed, 1) for w in sorted(current)}
        self.previous, self.previous_ns = current, now_ns
        return {
            "t": round(self.tracker.seconds(now_ns), 3),
            "count": sum(current.values()),
            "rate": round(sum(rates.values()), 1),
            "workers": rates,
            "accounted": len(self.tracker.accounted),
            "sent": self.tracker.sent,
        }


Emit = Callable[..., None]


async def collect(
    batches: AsyncIterator[list[bytes]],
    broadcast: Callable[[wire.Cracked], Awaitable[None]],
    emit: Emit,
    idle_timeout: float | None = None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Record results until the job is complete (or nothing came for `idle_timeout` s).

    When the word is found it says so at once (a "found" report, and a `Cracked` notice
    broadcast to workers and producer), then goes on until every task is accounted for.
    """
    tracker = Tracker()
    windows = Windows(tracker)

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            if tracker.job is not None:  # t counts from the job's announcement
                emit("stats", **windows.stats())

    ticker = asyncio.create_task(tick())
    try:
        while not tracker.complete:
            try:
                async with asyncio.timeout(idle_timeout):
                    batch = await anext(batches)
            except TimeoutError:
                log.warning(
                    "nothing for %g s with %d of %s tasks accounted for: giving up",
                    idle_timeout,
                    len(tracker.accounted),
                    tracker.sent if tracker.sent is not None else "?",
                )
                break
            for message in batch:
                for data in wire.split(message):  # several reports in one message (AMQP)
                    if (notice := tracker.take(data)) is not None:
                        emit("found", word=notice.word, seconds=round(tracker.seconds(), 3))
                        await broadcast(notice)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    if tracker.job is not None:
        emit("stats", **windows.stats())
    return tracker.result()
