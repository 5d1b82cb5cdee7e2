"""A job, and the channels it travels on.

The defaults are the book's names and ports (docs/wire.md), so its Node.js samples and
these programs interoperate; a test or a notebook run uses `unique` channels instead, so
it never meets a reader's job or another run.
"""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

from patterns.tasks import wire
from patterns.tasks.space import ALPHABET, batches, search_space

BATCH_SIZE = 10_000


@dataclass(frozen=True)
class Channels:
    tasks: str  # zmq: the producer's PUSH endpoint; amqp: a queue; streams: a stream
    results: str  # the book's `Found: <word>`. zmq: the collector's PULL endpoint; amqp: a queue
    control: str  # zmq: the collector's PUB endpoint; amqp: a fanout exchange; streams: a stream
    reports: str  # our reports (job, sent, done, dead). zmq: a second collector endpoint
    dead: str = ""  # amqp: the dead-letter queue; streams: the dead-letter stream
    group: str = ""  # streams: the workers' consumer group

    def options(self) -> list[str]:
        """The command-line options that name these channels."""
        names = ("tasks", "results", "control", "reports", "dead", "group")
        return [arg for n in names if getattr(self, n) for arg in (f"--{n}", getattr(self, n))]


DEFAULTS = {
    "zmq": Channels(*(f"tcp://127.0.0.1:{port}" for port in (5016, 5017, 5018, 5019))),
    "amqp": Channels(
        "tasks_queue", "results_queue", "tasks_control", "tasks_reports", "tasks_queue.dead"
    ),
    "streams": Channels(
        "tasks_stream",
        "results_stream",
        "tasks_control",
        "tasks_reports",
        "tasks_stream.dead",
        "workers_group",
    ),
}
TRANSPORTS = tuple(DEFAULTS)
NAMED = ("tasks", "results", "control", "reports", "dead")


def unique(transport: str, label: str = "run") -> Channels:
    """Channels of this run only: free ports (zmq), or names with a random suffix."""
    if transport == "zmq":
        return Channels(*["tcp://127.0.0.1:0"] * 4)
    suffix = f"{label}.{uuid.uuid4().hex[:12]}"
    defaults = DEFAULTS[transport]
    return replace(defaults, **{n: f"{getattr(defaults, n)}.{suffix}" for n in NAMED})


def plan(
    search_hash: str,
    max_length: int,
    alphabet: str = ALPHABET,
    batch_size: int = BATCH_SIZE,
    job_id: str | None = None,
) -> tuple[wire.Job, Iterator[wire.Task]]:
    """The job's announcement and its tasks: the whole space cut into batches."""
    total = search_space(len(alphabet), max_length)
    job = wire.Job(
        job=job_id or uuid.uuid4().hex,
        searchHash=search_hash.lower(),
        alphabet=alphabet,
        maxLength=max_length,
        batchSize=batch_size,
        tasks=-(-total // batch_size),
        started=time.time(),
    )
    tasks = (
        wire.Task(job.searchHash, alphabet, start, end, job.job)
        for start, end in batches(total, batch_size)
    )
    return job, tasks
