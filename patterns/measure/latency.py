"""Latency, recorded cheaply per message and summarised in bulk.

Recording is one subtraction and one store into a preallocated `array('q')`: no
allocation, no sorting, no histogram bucket maths on the hot path. Percentiles are
computed afterwards over the whole array with numpy.

Percentiles use the nearest-rank definition, as HdrHistogram does: the p-th percentile
of n values is the value of rank ceil(p/100 * n) in sorted order, the smallest recorded
value such that at least p% of values are <= it. Linear interpolation, numpy's default,
reports values that were never observed: with 1,000 samples its p99.9 is a blend of the
two slowest. The rank is computed in exact integer arithmetic: in floating point 99.9/100
is 0.9990000000000001, which moves p99.9 of 1,000 values one rank up (numpy's
`inverted_cdf` does exactly that).

A value outside [0, limit_ns] (a timestamp from another host's clock, a corrupted field)
is kept out of the percentiles but counted in `out_of_range`, never silently dropped.
"""

import time
from array import array
from dataclasses import dataclass

import numpy as np

PERCENTILES_PER_MILLE = (500, 900, 990, 999)  # p50, p90, p99, p99.9, exactly


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    p999_ns: int
    max_ns: int
    out_of_range: int = 0

    def __str__(self) -> str:
        if not self.count:
            return f"no latencies recorded (out of range: {self.out_of_range})"
        ms = [v / 1e6 for v in (self.p50_ns, self.p90_ns, self.p99_ns, self.p999_ns, self.max_ns)]
        text = "p50 {:.3f}  p90 {:.3f}  p99 {:.3f}  p99.9 {:.3f}  max {:.3f} ms".format(*ms)
        extra = f"  ({self.out_of_range} out of range)" if self.out_of_range else ""
        return f"{text}  over {self.count:,} messages{extra}"


def percentiles(values_ns: np.ndarray, limit_ns: int) -> LatencySummary:
    """Nearest-rank percentiles of `values_ns`, excluding and counting out-of-range values."""
    valid = (values_ns >= 0) & (values_ns <= limit_ns)
    kept = values_ns[valid]
    out_of_range = int(values_ns.size - kept.size)
    if kept.size == 0:
        return LatencySummary(0, 0, 0, 0, 0, 0, out_of_range)
    n = int(kept.size)
    # 0-based index of rank ceil(per_mille * n / 1000), in integers
    indexes = [max(0, -(-per_mille * n // 1000) - 1) for per_mille in PERCENTILES_PER_MILLE]
    p50, p90, p99, p999 = (int(v) for v in np.partition(kept, indexes)[indexes])
    return LatencySummary(n, p50, p90, p99, p999, int(kept.max()), out_of_range)


class LatencyRecorder:
    """Latencies in nanoseconds, appended to a preallocated buffer that grows if it must."""

    def __init__(self, capacity: int = 1 << 20, limit_ns: int = 3_600 * 10**9) -> None:
        self.limit_ns = limit_ns
        self._values = array("q", bytes(8 * capacity))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def record(self, sent_ns: int, now_ns: int | None = None) -> None:
        """Record `now - sent_ns`. Pass `now_ns` to time a drained batch with one clock read."""
        count = self._count
        latency = (time.perf_counter_ns() if now_ns is None else now_ns) - sent_ns
        try:
            self._values[count] = latency
        except IndexError:  # rare: double the buffer rather than lose the value
            self._values.extend(array("q", bytes(8 * len(self._values))))
            self._values[count] = latency
        self._count = count + 1

    def values(self, start: int = 0) -> np.ndarray:
        """The recorded latencies from index `start` on, as a numpy view (no copy)."""
        return np.frombuffer(self._values, dtype=np.int64, count=self._count)[start:]

    def summary(self, start: int = 0) -> LatencySummary:
        return percentiles(self.values(start), self.limit_ns)

    def clear(self) -> None:
        self._count = 0
