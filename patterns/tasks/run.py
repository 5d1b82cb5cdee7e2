"""A whole job from a notebook: collector, workers and producer as child processes.

    result = await crack("amqp", channels, word="node", workers=2, plot=plot)

starts the collector, the workers and then the producer, exactly as a reader would from
three terminals, follows the collector's reports (its tasks/s, overall and per worker,
go to the live plot), and returns its result: the word, the time, and what became of
every task (`result["ledger"]`). `during` is called on each of the collector's stats
reports with the running `Crew`: that is where a fault demo kills a worker mid-job. With
a `during`, the collector reports every `FAULT_INTERVAL_S` instead of every 0.25 s, so
that the fault lands when it says even in a job of a fraction of a second (a test job
on a quiet machine is done in about 0.2 s: it ended before the first 0.25 s report).
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from patterns import processes
from patterns.measure.live import LivePlot
from patterns.tasks.job import Channels
from patterns.tasks.space import ALPHABET

MODULE = "patterns.tasks"
FAULT_INTERVAL_S = 0.02  # the collector's stats interval when a fault acts on them


@dataclass
class Crew:
    """The children of one run, for a fault to act on."""

    transport: str
    channels: Channels
    collector: processes.Child
    workers: list[processes.Child] = field(default_factory=list)
    producer: processes.Child | None = None
    killed: list[str] = field(default_factory=list)

    def kill(self, index: int = 0) -> str:
        """kill -9 one worker; its name."""
        worker = self.workers[index]
        worker.kill()
        self.killed.append(worker.ready["name"])
        return worker.ready["name"]


During = Callable[[Crew, dict[str, Any]], Awaitable[None]]


def kill_worker_when(fraction: float, index: int = 0) -> During:
    """A fault: kill -9 worker `index` once `fraction` of the job's tasks are accounted for."""

    async def during(crew: Crew, stats: dict[str, Any]) -> None:
        tasks = crew.producer.ready["tasks"] if crew.producer else 0
        if not crew.killed and tasks and stats["accounted"] >= fraction * tasks:
            crew.kill(index)

    return during


async def crack(
    transport: str,
    channels: Channels,
    *,
    word: str | None = None,
    search_hash: str | None = None,
    max_length: int = 4,
    alphabet: str = ALPHABET,
    workers: int = 2,
    worker_options: tuple[str, ...] = (),
    producer_options: tuple[str, ...] = (),
    collector_options: tuple[str, ...] = (),
    plot: LivePlot | None = None,
    label: str = "",
    during: During | None = None,
    late_workers: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one job to its end; the collector's result, plus who was killed.

    The plot, if any, gets the collector's tasks/s for all workers and for each, named
    after `label`.
    """
    search_hash = search_hash or hashlib.sha1(str(word).encode()).hexdigest()
    transport_args = ("--transport", transport)
    job_args = ("--hash", search_hash, "--max-length", str(max_length), "--alphabet", alphabet)
    async with processes.children() as started:

        async def start(role: str, *args: str, name: str | None = None) -> processes.Child:
            child = await processes.start(
                MODULE, role, *transport_args, *args, name=name or role, env=env
            )
            started.append(child)
            return child

        async def start_workers(count: int, first: int, to: Channels) -> None:
            names = [f"w{n}" for n in range(first, first + count)]
            options = (*to.options(), *worker_options)
            crew.workers += await asyncio.gather(
                *(start("worker", *options, "--name", name, name=name) for name in names)
            )

        if during is not None and "--interval" not in collector_options:
            collector_options = (*collector_options, "--interval", str(FAULT_INTERVAL_S))
        collector = await start("collector", *channels.options(), *collector_options)
        crew = Crew(transport, channels, collector)
        if transport == "zmq":  # the producer binds; workers connect to it and to the sink
            sink = collector.ready
            channels = Channels(
                "tcp://127.0.0.1:0", sink["results"], sink["control"], sink["reports"]
            )
            early = workers - late_workers
            crew.producer = await start(
                "producer",
                *channels.options(),
                *job_args,
                "--workers",
                str(early),
                *producer_options,
            )
            channels = replace(channels, tasks=crew.producer.ready["endpoint"])
            await start_workers(early, 1, channels)
        else:
            await start_workers(workers - late_workers, 1, channels)
            crew.producer = await start(
                "producer", *channels.options(), *job_args, *producer_options
            )
        if late_workers:  # only once the producer has handed out every task
            await crew.producer.next_report("result")
            await start_workers(late_workers, workers - late_workers + 1, channels)
        found = None
        async for report in collector.reports():
            if report["event"] == "stats":
                if plot is not None:
                    plot.add(f"{label}all workers", report)
                    for name, rate in report["workers"].items() if workers > 1 else ():
                        plot.add(f"{label}{name}", {"t": report["t"], "rate": rate})
                if during is not None:
                    await during(crew, report)
            elif report["event"] == "found":
                found = report
            elif report["event"] == "result":
                return report | {"found_report": found, "killed": crew.killed}
        raise processes.ChildFailed(f"the collector ended without a result:\n{collector.log()}")


def tasks_plot(title: str) -> LivePlot:
    """A live plot of tasks/s (no latency panel: a task's time is its hashing)."""
    return LivePlot(title, latency=False, unit="tasks hashed/s")


def accounting(result: dict[str, Any]) -> str:
    """What became of the job's tasks, in words that do not depend on timing."""
    ledger = result["ledger"]
    lines = [
        f"word: {result['word']} (index {result['index']:,})"
        if result["word"]
        else "word: not in the search space",
        f"tasks sent: {ledger['sent']:,}; accounted for: {ledger['sent'] - ledger['lost']:,};"
        f" lost: {ledger['lost']:,}; complete: {result['complete']}",
    ]
    return "\n".join(lines)


def prefetch_figure(rows: list[dict[str, Any]]) -> Figure:
    """A prefetch sweep: job time, and the tasks redelivered after a worker was killed."""
    with plt.ioff():
        fig, (time_axes, held_axes) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    labels = [str(row["prefetch"]) for row in rows]
    time_axes.bar(labels, [row["seconds"] for row in rows], color="C0")
    time_axes.set(xlabel="prefetch", ylabel="job time, s", title="time to hash every task")
    held_axes.bar(labels, [row["redelivered"] for row in rows], color="C1")
    held_axes.set(
        xlabel="prefetch", ylabel="tasks", title="tasks the killed worker held, done again"
    )
    return fig
