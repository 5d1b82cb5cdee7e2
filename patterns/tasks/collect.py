"""The collector's bookkeeping, whatever the transport: is the job done, and what became of
every task?

It reads the reports channel (the producer's `job` and `sent`, each worker's `done` or
`dead`) and the results channel (the book's `Found: <word>`, from our workers or the
book's). Each task is numbered by its place in the job, (batchStart - 1) / batchSize,
and recorded in a `DeliveryLedger` when a worker reports it done or dead, so at the end
every task the producer sent is accounted for: done once, done twice (a redelivery after
the first worker had already reported it: the answer is the same, it is counted once),
or missing.

A job is complete when the producer has said how many tasks it sent and each of them has
been reported. It does not wait for ever: when nothing arrives for `idle_timeout`
seconds while tasks are outstanding, or the transport says the broker lost what it held
(`lost`), the collector ends and its result names the missing tasks.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from patterns.events import OnEvent, log_event
from patterns.measure import DeliveryLedger
from patterns.messages import MalformedMessage
from patterns.tasks import wire
from patterns.tasks.space import index_of

log = logging.getLogger("patterns.tasks.collector")
IDLE_S = 90.0  # longer than a worker's budget for one task (work.BUDGET_S)
INTERVAL_S = 0.25


class Collector:
    """Feed it every message of the results and reports channels (`take`); `wait` until
    the job is complete, or given up."""

    def __init__(self, on_event: OnEvent = log_event) -> None:
        self.on_event = on_event
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
        self.hashed = self.skipped = self.duplicates = self.retried = 0
        self.dead: list[wire.Dead] = []  # every dead report seen: malformed tasks too
        self.dead_tasks = 0  # tasks of this job set aside
        self.malformed = 0
        self.foreign = 0  # reports of another job: leftovers on a reused channel
        self.gave_up: str | None = None  # why the collector stopped waiting, if it did
        self._progress = asyncio.Event()
        self._windows: tuple[Counter[str], int] = (Counter(), self.started_ns)

    @property
    def complete(self) -> bool:
        return self.sent is not None and self._sent_accounted >= self.sent

    @property
    def outstanding(self) -> bool:
        return self.job is not None and not self.complete

    def take(self, data: bytes) -> wire.Cracked | None:
        """Record one message; the notice to broadcast if it tells the word for the first time.
        Never raises: a message that is not a result or a report is counted and skipped."""
        self._progress.set()
        try:
            word = wire.found_word(data)
            message = wire.decode_report(data) if word is None else None
        except MalformedMessage as error:
            self.malformed += 1
            log.warning("ignored a message that is not a result or a report: %s", error)
            return None
        if word is not None:
            return self._found(word)
        if isinstance(message, wire.Job) and self.job is None:
            self.job, self.started_ns = message, time.perf_counter_ns()
            self._windows = (Counter(), self.started_ns)
            log.info("job %s: %d tasks", message.job, message.tasks)
            for report in self.early:
                self._record(report)
            self.early = []
        elif isinstance(message, wire.Sent) and self.job and message.job == self.job.job:
            self.sent = message.tasks
            self._sent_accounted = sum(seq < message.tasks for seq in self.accounted)
        elif isinstance(message, wire.Done | wire.Dead):
            if isinstance(message, wire.Dead):
                self.dead.append(message)  # whichever job (or none) it belonged to
            if self.job is None:
                self.early.append(message)
            else:
                self._record(message)
            if isinstance(message, wire.Done) and message.found is not None:
                return self._found(message.found)
        return None

    def _found(self, word: str) -> wire.Cracked | None:
        if self.word is not None:
            return None
        search_hash = wire.sha1_hex(word)
        if self.job is not None and search_hash != self.job.searchHash:
            self.foreign += 1
            return None
        self.word, self.found_ns = word, time.perf_counter_ns()
        log.info("found %r after %.3f s", word, self.seconds(self.found_ns))
        self.on_event("found", word=word, seconds=round(self.seconds(), 3))
        return wire.Cracked(search_hash, word, self.job.job if self.job else None)

    def _record(self, report: wire.Done | wire.Dead) -> None:
        assert self.job is not None
        if report.job != self.job.job or report.batchStart is None:
            self.foreign += 1
            return
        seq, misaligned = divmod(report.batchStart - 1, self.job.batchSize)
        if misaligned or seq >= self.job.tasks:
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

    def lost(self, why: str) -> None:
        """The transport's word that the broker lost what it held: stop waiting for it."""
        if self.outstanding and self.gave_up is None:
            self.gave_up = why
            log.error("%s", why)
            self._progress.set()

    async def wait(self, idle_timeout: float = IDLE_S, interval: float = INTERVAL_S) -> None:
        """Until the job is complete, or nothing came for `idle_timeout` s while tasks were
        outstanding, or `lost` was called; "stats" events every `interval` s meanwhile."""
        ticker = asyncio.create_task(self._tick(interval))
        try:
            while not self.complete and self.gave_up is None:
                self._progress.clear()
                try:
                    await asyncio.wait_for(self._progress.wait(), idle_timeout)
                except TimeoutError:
                    if self.outstanding:
                        self.gave_up = (
                            f"nothing came for {idle_timeout:g} s with "
                            f"{len(self.accounted):,} of {self.sent or self.job.tasks:,} "  # type: ignore[union-attr]
                            "tasks accounted for"
                        )
                        log.error("%s: giving up", self.gave_up)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if self.job is not None:
            self.on_event("stats", **self.stats())

    async def _tick(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.job is not None:  # t counts from the job's announcement
                self.on_event("stats", **self.stats())

    def seconds(self, now_ns: int | None = None) -> float:
        return ((now_ns or time.perf_counter_ns()) - self.started_ns) / 1e9

    def stats(self) -> dict[str, Any]:
        """Tasks/s in the last window, overall and per worker."""
        now_ns = time.perf_counter_ns()
        previous, previous_ns = self._windows
        elapsed = max(1, now_ns - previous_ns) / 1e9
        current = Counter(self.tasks_by_worker)
        rates = {w: round((current[w] - previous[w]) / elapsed, 1) for w in sorted(current)}
        self._windows = (current, now_ns)
        return {
            "t": round(self.seconds(now_ns), 3),
            "count": sum(current.values()),
            "rate": round(sum(rates.values()), 1),
            "workers": rates,
            "accounted": len(self.accounted),
            "sent": self.sent,
        }

    def result(self) -> dict[str, Any]:
        job = self.job
        sent = self.sent if self.sent is not None else (job.tasks if job else 0)
        ledger = self.ledger.report({job.job: sent} if job else {})
        missing = [seq for seq in range(sent) if seq not in self.accounted]
        return {
            "job": job.job if job else None,
            "word": self.word,
            "index": index_of(self.word, job.alphabet) if self.word and job else None,
            # a word heard before the job's announcement (a book worker's) counts as at once
            "seconds_to_word": max(0.0, round(self.seconds(self.found_ns), 3))
            if self.word
            else None,
            "seconds": round(self.seconds(), 3),
            "complete": self.complete,
            "gave_up": self.gave_up,
            "tasks": sent,
            "missing": len(missing),
            # the batches missing, as the producer numbered them (batchStart of each)
            "missing_batches": [seq * job.batchSize + 1 for seq in missing[:100]] if job else [],
            "hashed_tasks": sum(self.tasks_by_worker.values()),
            "skipped": self.skipped,
            "dead_tasks": self.dead_tasks,
            "dead": [asdict(d) for d in self.dead[:100]],
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
