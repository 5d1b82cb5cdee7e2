"""Open-loop load on a requester, measured in its own process: where is the knee, and why?

The requester runs as a child process that offers requests at fixed rates, one step per
rate, timing each from when it was *scheduled* (see `pacing`), and reports live windows
("stats"), one summary per rate ("step") and a final "result" to the notebook, which only
draws. Drawing stays out of the measuring process: rendering a figure stalls an event loop
for tens of milliseconds, and those stalls would be measured as latency.

Each step also says where the CPU went: the requester's and the replier's processes (and
the broker's, when it runs on this machine), in cores, so the knee can be explained: as
the offered rate nears what the busiest process can do per second, requests queue, and
latency grows without bound once it is passed.

    python -m patterns.reqrep replier --transport zmq --endpoint tcp://127.0.0.1:5030
    python -m patterns.reqrep load --transport zmq --to tcp://127.0.0.1:5030 --rates 100,1000
"""

import asyncio
import contextlib
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psutil

from patterns import clients, config, processes
from patterns.events import OnEvent, log_event
from patterns.measure import LatencyRecorder, paced
from patterns.reqrep import (
    NAMES,
    Overloaded,
    Requester,
    RequestFailed,
    RequestTimeout,
    amqp,
    connect,
)
from patterns.reqrep.pacing import Pacer, lateness, timer_paced

REQUEST = {"a": 1, "b": 2}
INTERVAL_S = 0.25
PACERS: dict[str, Pacer] = {
    "timerfd": timer_paced,
    "asyncio": lambda rate, count: paced(rate, count, precise=False),
    "blocking": lambda rate, count: paced(rate, count, precise=True),
}
# the replier that answers each requester: its --transport, the option that says where it
# listens, where when the caller does not say, and what its "ready" report calls that place
REPLIER = {
    "zmq": ("zmq", "--endpoint", "tcp://127.0.0.1:0", "endpoint"),
    "amqp": ("amqp", "--queue", None, "queue"),
    "amqp-direct": ("amqp", "--queue", None, "queue"),
    "redis": ("redis", "--stream", None, "stream"),
}


async def start_replier(transport: str, address: str | None, *options: str) -> processes.Child:
    """A replier for `transport`'s requester as a child process, listening at `address` (for
    ZeroMQ, a free port if None); its "ready" report says where, under `REPLIER[..][3]`."""
    kind, flag, anywhere, _ = REPLIER[transport]
    where = address or anywhere
    assert where is not None, f"a {transport} replier needs a queue or stream name"
    return await processes.start(
        "patterns.reqrep", "replier", "--transport", kind, flag, where, *options
    )


def address_of(transport: str, replier: processes.Child) -> str:
    """Where a replier started by `start_replier` listens."""
    return replier.ready[REPLIER[transport][3]]


class Step:
    """One offered rate: outcomes counted, latencies recorded from each schedule."""

    def __init__(self, rate: float, count: int) -> None:
        self.rate, self.count = rate, count
        self.latency = LatencyRecorder(capacity=max(1, count))
        self.answered = self.timed_out = self.failed = self.shed = 0
        self.started_ns = time.perf_counter_ns()
        self.ended_ns = self.started_ns

    async def request(self, requester: Requester, scheduled_ns: int, timeout: float) -> None:
        try:
            await requester.request(REQUEST, timeout)
        except RequestTimeout:
            self.timed_out += 1
        except Overloaded:  # refused at once: too many were pending
            self.shed += 1
            return
        except RequestFailed:  # refused or channel closed: no latency to speak of
            self.failed += 1
            return
        else:
            self.answered += 1
        now_ns = time.perf_counter_ns()
        self.latency.record(scheduled_ns, now_ns)  # a timeout counts, at the time it gave up
        self.ended_ns = now_ns


async def offer(requester: Requester, step: Step, timeout: float, pacer: str = "timerfd") -> None:
    """Start a request at each scheduled time, whatever became of the earlier ones."""
    running: set[asyncio.Task] = set()
    async for due in PACERS[pacer](step.rate, step.count):
        for scheduled_ns in due:
            task = asyncio.create_task(step.request(requester, scheduled_ns, timeout))
            running.add(task)
            task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(running)


class CpuTime:
    """CPU seconds used by named processes and by the whole machine, between two samples."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.sample()

    def sample(self) -> dict[str, float]:
        now = {"wall": time.perf_counter(), "requester": time.process_time()}
        for name, process in self.processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                now[name] = times.user + times.system
        machine = psutil.cpu_times()
        now["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        self.last, previous = now, getattr(self, "last", now)
        return {name: now[name] - previous.get(name, now[name]) for name in now}

    def cores(self) -> dict[str, float]:
        """Cores kept busy since the last call (1.0 = one core all the time)."""
        used = self.sample()
        wall = used.pop("wall") or 1e-9
        return {name: round(seconds / wall, 2) for name, seconds in used.items()}


async def broker_pid(transport: str) -> int | None:
    """The broker's process id, when it runs on this machine (to count its CPU)."""
    if transport == "redis" and urlsplit(config.REDIS_URL).hostname in ("127.0.0.1", "localhost"):
        async with clients.redis() as redis:
            return int((await redis.info("server"))["process_id"])
    if transport.startswith("amqp") and urlsplit(config.AMQP_URL).hostname in (
        "127.0.0.1",
        "localhost",
    ):
        found = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        return found[0] if len(found) == 1 else None
    return None


def window(step: Step, since: dict[str, int]) -> dict[str, Any]:
    """Throughput and latency percentiles since the previous window."""
    now_ns = time.perf_counter_ns()
    stats: dict[str, Any] = {
        "offered": step.rate,
        "rate": round((step.answered - since["answered"]) * 1e9 / max(1, now_ns - since["ns"])),
        "timed_out": step.timed_out,
        "shed": step.shed,
    }
    if len(step.latency) > since["index"]:
        summary = step.latency.summary(start=since["index"])
        stats |= {
            "p50_ms": summary.p50_ns / 1e6,
            "p99_ms": summary.p99_ns / 1e6,
            "p999_ms": summary.p999_ns / 1e6,
        }
    since |= {"ns": now_ns, "answered": step.answered, "index": len(step.latency)}
    return stats


async def offer_steps(
    transport: str,
    to: str | None,
    rates: list[float],
    seconds: float,
    timeout: float,
    pacer: str = "timerfd",
    max_pending: int = 1_000,
    replier_pid: int | None = None,
    fast: bool = False,
    on_event: OnEvent = log_event,
) -> dict:
    """The measuring side (a child process): one step per offered rate, reported live."""
    async with connect(transport, to, timeout, fast=fast) as connected:
        connected.max_pending = max_pending
        replier_pid = getattr(connected, "pid", None) or replier_pid
        cpu = CpuTime({"replier": replier_pid, "broker": await broker_pid(transport)})
        # one answered request first: the replier is up and connected before the clock runs
        await connected.request(REQUEST, timeout=processes.READY_TIMEOUT_S)
        on_event("ready", transport=transport)
        started_ns = time.perf_counter_ns()
        steps = []
        for rate in rates:
            step = Step(rate, max(1, round(rate * seconds)))
            since = {"ns": step.started_ns, "answered": 0, "index": 0}

            async def report_windows(step: Step = step, since: dict = since) -> None:
                while True:
                    await asyncio.sleep(INTERVAL_S)
                    t = round((time.perf_counter_ns() - started_ns) / 1e9, 3)
                    on_event("stats", t=t, **window(step, since))

            cpu.cores()
            reporter = asyncio.create_task(report_windows())
            try:
                await offer(connected, step, timeout, pacer)
            finally:
                reporter.cancel()
            summary = step.latency.summary()
            elapsed_s = max(1e-9, (step.ended_ns - step.started_ns) / 1e9)
            steps.append(
                {
                    "offered": rate,
                    "sent": step.count,
                    "answered": step.answered,
                    "timed_out": step.timed_out,
                    "shed": step.shed,
                    "failed": step.failed,
                    "achieved": round(step.answered / elapsed_s),
                    "p50_ms": summary.p50_ns / 1e6,
                    "p90_ms": summary.p90_ns / 1e6,
                    "p99_ms": summary.p99_ns / 1e6,
                    "p999_ms": summary.p999_ns / 1e6,
                    "max_ms": summary.max_ns / 1e6,
                    "cores": cpu.cores(),
                }
            )
            on_event("step", **steps[-1])
        result = {"transport": transport, "steps": steps, "requester": connected.stats()}
    on_event("result", **result)
    return result


async def run(
    transport: str,
    rates: list[float],
    seconds: float,
    timeout: float = 2.0,
    pacer: str = "timerfd",
    plot: Any = None,
    max_pending: int = 1_000,
) -> dict:
    """Start a replier (the pipe's requester starts its own) and the load child; follow it."""
    address = f"bench:reqrep:{uuid.uuid4().hex}"  # a queue or stream of this run only
    try:
        async with processes.children() as started:
            options = ["--transport", transport, "--rates", ",".join(map(str, rates))]
            options += ["--seconds", str(seconds), "--timeout", str(timeout), "--pacer", pacer]
            options += ["--max-pending", str(max_pending)]
            if transport in REPLIER:
                replier = await start_replier(transport, None if transport == "zmq" else address)
                started.append(replier)
                to = address_of(transport, replier)
                options += ["--to", to, "--replier-pid", str(replier.pid)]
            load = await processes.start("patterns.reqrep", "load", *options)
            started.append(load)
            if plot is None:
                return await load.next_report("result")
            return await plot.follow(NAMES[transport], load.reports())
    finally:
        await forget(transport, address)


async def forget(transport: str, address: str) -> None:
    """Delete the queue or stream a run created."""
    if transport.startswith("amqp"):
        await amqp.delete_queue(address)
    elif transport == "redis":
        async with clients.redis() as redis:
            await redis.delete(address)


async def pacer_lateness(rate: float, seconds: float, on_event: OnEvent = log_event) -> dict:
    """How late each pacer hands requests over at `rate` (a child process: no other work)."""
    on_event("ready")
    late = {}
    for name, pacer in PACERS.items():
        late[name] = vars(await lateness(pacer, rate, max(1, round(rate * seconds))))
    on_event("result", rate=rate, lateness=late)
    return late


async def pacers_compared(transport: str, rate: float, seconds: float) -> dict[str, dict]:
    """Per pacer: how late it hands requests over, and the round trips measured with it."""
    async with processes.children() as started:
        child = await processes.start(
            "patterns.reqrep", "lateness", "--rate", str(rate), "--seconds", str(seconds)
        )
        started.append(child)
        late = (await child.next_report("result"))["lateness"]
    compared = {}
    for pacer in PACERS:
        step = (await run(transport, [rate], seconds, pacer=pacer))["steps"][0]
        compared[pacer] = {"lateness": late[pacer], "round_trip": step}
    return compared
