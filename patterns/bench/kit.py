"""The measuring kit's own per-message cost: recording a latency, a ledger entry, a probe.

Each cost is the median, over chunks of 10,000 messages, of (time of the chunk with the
call - time of the same loop without it) / 10,000: the cost the kit adds to a receiver's
loop. Target: latency and ledger recording under 300 ns each.
"""

import statistics
import time
from collections.abc import Callable

from patterns.measure import DeliveryLedger, LatencyRecorder, probe, read_probe

CHUNK = 10_000
TARGET_NS = 300


def cost_ns(per_message: Callable[[list[int]], None], values: list[int]) -> tuple[float, float]:
    """(median net ns per message, median bare-loop ns per message) over chunks."""

    def bare(chunk: list[int]) -> None:
        for _ in chunk:
            pass

    net, loop = [], []
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        t0 = time.perf_counter_ns()
        bare(chunk)
        t1 = time.perf_counter_ns()
        per_message(chunk)
        t2 = time.perf_counter_ns()
        loop.append((t1 - t0) / len(chunk))
        net.append((t2 - t1 - (t1 - t0)) / len(chunk))
    return statistics.median(net), statistics.median(loop)


async def run(quick: bool) -> dict:
    messages = 100_000 if quick else 1_000_000
    now = time.perf_counter_ns()
    stamps = [now - 1_000 * (i % 977) for i in range(messages)]
    seqs = list(range(messages))

    latency = LatencyRecorder(capacity=messages)
    record_latency = latency.record

    def latencies(chunk: list[int]) -> None:
        for sent_ns in chunk:
            record_latency(sent_ns)

    ledger = DeliveryLedger()
    record_arrival = ledger.record

    def arrivals(chunk: list[int]) -> None:
        for seq in chunk:
            record_arrival("p0", seq)

    def probes(chunk: list[int]) -> None:
        for seq in chunk:
            read_probe(probe("p0", seq, now, 64))

    latency_ns, loop_ns = cost_ns(latencies, stamps)
    ledger_ns, _ = cost_ns(arrivals, seqs)
    probe_ns, _ = cost_ns(probes, seqs[: messages // 10])
    assert len(latency) == messages and ledger.received() == messages
    return {
        "messages": messages,
        "latency_record_ns": round(latency_ns, 1),
        "ledger_record_ns": round(ledger_ns, 1),
        "probe_roundtrip_ns": round(probe_ns, 1),
        "bare_loop_ns": round(loop_ns, 1),
        "target_ns": TARGET_NS,
        "meets_target": latency_ns < TARGET_NS and ledger_ns < TARGET_NS,
    }
