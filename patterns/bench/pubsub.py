"""Pub/sub fan-out per transport: idiomatic, fast and raw, side by side in alternating rounds.

For each transport (redis, zmq, amqp, streams): one publisher process and one process
holding SUBSCRIBERS connections (`patterns.pubsub.load`), the workload of notebooks
02-05's "Going faster". Closed loop (publish as fast as possible) gives the fan-out
throughput, deliveries per second summed over the subscribers; open loop at a fixed
offered rate gives p50/p99 latency. Each round runs the same workload through:

* `idiomatic`: the `patterns.pubsub` modules, one message per `await`, as the chat runs;
* `fast`: their `*_fast.py` siblings, where one exists;
* `raw`: the client libraries by hand (`patterns.bench.pubsub_raw`), no layers.

The order of the three rotates from round to round, so the shared machine's drift hits
all of them alike; medians are reported. `ratio` = the best of idiomatic and fast over
raw (`ratio_of` says which), target >= 0.9; `idiomatic_ratio` shows the cost of idiom;
`fast_speedup` = fast over idiomatic, which must be >= 1.5 for a fast variant to stay.
"""

import statistics
import uuid
from typing import Any

from patterns.chat import instances
from patterns.pubsub import load

SUBSCRIBERS = 4
TARGET = 0.9
FAST_TARGET = 1.5
OFFERED = 500  # messages per second to each subscriber, in the latency runs
# messages per closed-loop run: AMQP's idiomatic publisher waits for each confirm
MESSAGES = {"redis": 20_000, "zmq": 20_000, "amqp": 4_000, "streams": 20_000}


async def measure(transport: str, impl: str, count: int, seconds: float) -> dict:
    topic = f"bench:pubsub:{transport}:{uuid.uuid4().hex[:8]}"
    try:
        # no drops at the high-water mark in a throughput run: fan-out speed, not loss
        closed = await load.run(
            transport, topic, count, SUBSCRIBERS, impl=impl, hwm=count + 1, maxlen=count
        )
        opened = await load.run(
            transport, topic, int(OFFERED * seconds), SUBSCRIBERS, rate=OFFERED, impl=impl
        )
    finally:
        await instances.clean(topic)
    for result in (closed, opened):
        ledger = result["ledger"]
        counts = {k: ledger[k] for k in ("sent", "received", "lost", "duplicated")}
        assert ledger["lost"] == ledger["duplicated"] == 0, f"{transport} {impl}: {counts}"
    return {
        "rate": closed["rate"],
        "p50_ms": opened["latency"]["p50_ns"] / 1e6,
        "p99_ms": opened["latency"]["p99_ns"] / 1e6,
    }


def summary(count: int, runs: dict[str, list[dict]]) -> dict[str, Any]:
    medians = {
        impl: {key: statistics.median(run[key] for run in rs) for key in rs[0]}
        for impl, rs in runs.items()
    }
    raw = medians["raw"]["rate"]
    best = max((i for i in medians if i != "raw"), key=lambda i: medians[i]["rate"])
    result: dict[str, Any] = {"messages": count}
    for impl, median in medians.items():
        result |= {
            f"{impl}_deliveries_per_s": round(median["rate"]),
            f"{impl}_p50_ms": round(median["p50_ms"], 3),
            f"{impl}_p99_ms": round(median["p99_ms"], 3),
        }
    result |= {
        "ratio": round(medians[best]["rate"] / raw, 3),
        "ratio_of": best,
        "idiomatic_ratio": round(medians["idiomatic"]["rate"] / raw, 3),
    }
    if "fast" in medians:
        result["fast_speedup"] = round(medians["fast"]["rate"] / medians["idiomatic"]["rate"], 3)
    return result


async def run(quick: bool) -> dict:
    rounds, scale, seconds = (1, 0.2, 0.5) if quick else (5, 1.0, 2.0)
    results: dict[str, Any] = {}
    for transport in load.TRANSPORTS:
        impls = [i for i in load.IMPLS if i != "fast" or transport in load.FAST]
        count = int(MESSAGES[transport] * scale)
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        for round_number in range(rounds):
            shift = round_number % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                runs[impl].append(await measure(transport, impl, count, seconds))
        results[transport] = summary(count, runs)
    return {
        "subscribers": SUBSCRIBERS,
        "offered_rate": OFFERED,
        "rounds": rounds,
        "transports": results,
        "target_ratio": TARGET,
        "target_fast_speedup": FAST_TARGET,
        "meets_target": all(
            r["ratio"] >= TARGET and r.get("fast_speedup", FAST_TARGET) >= FAST_TARGET
            for r in results.values()
        ),
    }
