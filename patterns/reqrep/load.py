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

    python -m patterns.reqrep.replier --transport zmq --endpoint tcp://127.0.0.1:5030
    python -m patterns.reqrep.load --transport zmq --to tcp://127.0.0.1:5030 --rates 100,1000
"""

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis.asyncio as aioredis

from patterns import config, processes
from patterns.measure import LatencyRecorder, paced
from patterns.reqrep import (
    NAMES,
    TRANSPORTS,
    Overloaded,
    Requester,
    RequestFailed,
    RequestTimeout,
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
# which replier answers each requester, and what its "ready" report calls its address
REPLIER = {
    "zmq": ("zmq", "--endpoint", "tcp://127.0.0.1:0", "endpoint"),
    "amqp": ("amqp", "--queue", None, "queue"),
    "amqp-direct": ("amqp", "--queue", None, "queue"),
    "redis": ("redis", "--stream", None, "stream"),
}


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
        client = aioredis.from_url(config.REDIS_URL)
        try:
            return int((await client.info("server"))["process_id"])
        finally:
            await client.aclose()
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


async def load_main(options: argparse.Namespace) -> None:
    rates = [float(rate) for rate in options.rates.split(",")]
    async with connect(options.transport, options.to, options.timeout) as connected:
        connected.max_pending = options.max_pending
        replier_pid = getattr(connected, "pid", None) or options.replier_pid
        cpu = CpuTime({"replier": replier_pid, "broker": await broker_pid(options.transport)})
        # one answered request first: the replier is up and connected before the clock runs
        await connected.request(REQUEST, timeout=processes.READY_TIMEOUT_S)
        processes.report("ready", transport=options.transport)
        started_ns = time.perf_counter_ns()
        steps = []
        for rate in rates:
            step = Step(rate, max(1, round(rate * options.seconds)))
            since = {"ns": step.started_ns, "answered": 0, "index": 0}

            async def report_windows(step: Step = step, since: dict = since) -> None:
                while True:
                    await asyncio.sleep(INTERVAL_S)
                    t = round((time.perf_counter_ns() - started_ns) / 1e9, 3)
                    processes.report("stats", t=t, **window(step, since))

            cpu.cores()
            reporter = asyncio.create_task(report_windows())
            try:
                await offer(connected, step, options.timeout, options.pacer)
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
            processes.report("step", **steps[-1])
        processes.report(
            "result", transport=options.transport, steps=steps, requester=connected.stats()
        )


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
                kind, flag, where, reported = REPLIER[transport]
                replier = await processes.start(
                    "patterns.reqrep.replier", "--transport", kind, flag, where or address
                )
                started.append(replier)
                options += ["--to", replier.ready[reported], "--replier-pid", str(replier.pid)]
            load = await processes.start(__name__, *options)
            started.append(load)
            if plot is None:
                return await load.next_report("result")
            return await plot.follow(NAMES[transport], load.reports())
    finally:
        await forget(transport, address)


async def forget(transport: str, address: str) -> None:
    """Delete the queue or stream a run created."""
    if transport.startswith("amqp"):
        from patterns.reqrep import amqp

        await amqp.delete_queue(address)
    elif transport == "redis":
        client = aioredis.from_url(config.REDIS_URL)
        try:
            await client.delete(address)
        finally:
            await client.aclose()


async def lateness_main(options: argparse.Namespace) -> None:
    rate = float(options.rates.split(",")[0])
    processes.report("ready")
    late = {}
    for name, pacer in PACERS.items():
        late[name] = vars(await lateness(pacer, rate, max(1, round(rate * options.seconds))))
    processes.report("result", rate=rate, lateness=late)


async def pacers_compared(transport: str, rate: float, seconds: float) -> dict[str, dict]:
    """Per pacer: how late it hands requests over, and the round trips measured with it."""
    async with processes.children() as started:
        child = await processes.start(
            __name__, "--lateness", "--rates", str(rate), "--seconds", str(seconds)
        )
        started.append(child)
        late = (await child.next_report("result"))["lateness"]
    compared = {}
    for pacer in PACERS:
        step = (await run(transport, [rate], seconds, pacer=pacer))["steps"][0]
        compared[pacer] = {"lateness": late[pacer], "round_trip": step}
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=TRANSPORTS, default="zmq")
    parser.add_argument("--to", help="the replier's endpoint, queue or stream (default: WIRE's)")
    parser.add_argument("--rates", default="100,1000,5000", help="requests/s, one step each")
    parser.add_argument("--seconds", type=float, default=3.0, help="per step")
    parser.add_argument("--timeout", type=float, default=2.0, help="per request, in seconds")
    parser.add_argument("--pacer", choices=tuple(PACERS), default="timerfd")
    parser.add_argument(
        "--max-pending", type=int, default=1_000, help="more at once are shed, not queued"
    )
    parser.add_argument("--replier-pid", type=int, help="to count the replier's CPU")
    parser.add_argument(
        "--lateness", action="store_true", help="only measure how late each pacer is"
    )
    options = parser.parse_args()
    processes.run(lateness_main(options) if options.lateness else load_main(options))


if __name__ == "__main__":
    main()
