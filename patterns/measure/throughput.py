"""Throughput: a counter the receiver bumps, sampled by whoever plots or reports it."""

import time


class ThroughputMeter:
    """Messages counted at one point (a receiver, a sender); rates come from two samples."""

    __slots__ = ("count", "started_ns")

    def __init__(self) -> None:
        self.count = 0
        self.started_ns = time.perf_counter_ns()

    def add(self, n: int = 1) -> None:
        self.count += n

    def rate(self, since_count: int = 0, since_ns: int | None = None) -> float:
        """Messages per second since a previous sample (default: since the meter started)."""
        elapsed_ns = time.perf_counter_ns() - (self.started_ns if since_ns is None else since_ns)
        return (self.count - since_count) * 1e9 / elapsed_ns if elapsed_ns > 0 else 0.0
