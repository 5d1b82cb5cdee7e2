import asyncio
import math
import time
from fractions import Fraction

import numpy as np
import pytest

from patterns.measure import (
    DeliveryLedger,
    LatencyRecorder,
    ThroughputMeter,
    end_marker,
    paced,
    percentiles,
    probe,
    read_end,
    read_probe,
)
from patterns.measure.stats import window
from patterns.messages import MalformedMessage


def nearest_rank(values: list[int], p: str) -> int:
    """The textbook definition, in exact arithmetic: the value at rank ceil(p/100 * n)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(Fraction(p) / 100 * len(ordered))) - 1]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 1001, 12345])
def test_percentiles_are_nearest_rank_and_agree_with_numpy(n: int) -> None:
    values = np.random.default_rng(n).lognormal(12, 1.5, n).astype(np.int64)
    summary = percentiles(values, limit_ns=10**15)
    got = (summary.p50_ns, summary.p90_ns, summary.p99_ns, summary.p999_ns)
    for p, value in zip(("50", "90", "99", "99.9"), got, strict=True):
        assert value == nearest_rank(values.tolist(), p)
        # numpy's nearest-rank method agrees but for float rounding of p/100 * n, which can
        # move it one rank up: never more
        ordered = np.sort(values)
        numpy_rank = np.searchsorted(
            ordered, np.percentile(values, float(p), method="inverted_cdf")
        )
        assert numpy_rank - np.searchsorted(ordered, value) in (0, 1)
    assert summary.max_ns == values.max() and summary.count == n


def test_a_percentile_is_always_an_observed_value() -> None:
    # with linear interpolation p99.9 of [1]*999 + [1000] would be 1.999: never observed
    values = np.array([1] * 999 + [1000])
    assert percentiles(values, 10**9).p999_ns == 1
    assert percentiles(np.append(values, 1000), 10**9).p999_ns == 1000


def test_recorder_records_and_grows_without_losing_values() -> None:
    recorder = LatencyRecorder(capacity=4)
    for latency in range(10):
        recorder.record(sent_ns=1_000 - latency, now_ns=1_000)
    assert len(recorder) == 10
    assert recorder.values().tolist() == list(range(10))
    assert recorder.summary(start=5).count == 5


def test_out_of_range_latencies_are_counted_not_dropped() -> None:
    recorder = LatencyRecorder(limit_ns=1_000)
    for latency in (-5, 10, 20, 5_000):
        recorder.record(sent_ns=0, now_ns=latency)
    summary = recorder.summary()
    assert (summary.count, summary.out_of_range, summary.max_ns) == (2, 2, 20)
    assert "2 out of range" in str(summary)


def test_recorder_uses_the_clock_when_not_given_one() -> None:
    recorder = LatencyRecorder()
    recorder.record(time.perf_counter_ns() - 1_000_000)
    assert 1_000_000 <= recorder.values()[0] < 10**9


def report(arrivals: list[tuple[str, int]], sent: dict[str, int]):
    ledger = DeliveryLedger()
    for producer, seq in arrivals:
        ledger.record(producer, seq)
    return ledger.report(sent)


def test_ledger_all_delivered_once_in_order() -> None:
    result = report([("a", i) for i in range(5)], {"a": 5})
    assert result.exactly_once_in_order and result.received == 5 and result.sent == 5


def test_ledger_finds_exactly_the_lost_including_the_tail() -> None:
    result = report([("a", 0), ("a", 2), ("a", 3)], {"a": 6})
    assert (result.lost, result.lost_seqs) == (3, {"a": [1, 4, 5]})
    assert result.duplicated == result.out_of_order == 0


def test_ledger_counts_duplicates_once_per_extra_copy() -> None:
    result = report([("a", 0), ("a", 1), ("a", 1), ("a", 1), ("a", 2), ("a", 0)], {"a": 3})
    assert (result.duplicated, result.lost, result.out_of_order) == (3, 0, 0)


def test_ledger_counts_reordering_by_first_arrivals() -> None:
    # 3 arrives before 1 and 2: both 1 and 2 are late; the copy of 3 is only a duplicate
    result = report([("a", 0), ("a", 3), ("a", 1), ("a", 2), ("a", 3), ("a", 4)], {"a": 5})
    assert (result.out_of_order, result.duplicated, result.lost) == (2, 1, 0)


def test_ledger_keeps_producers_apart() -> None:
    arrivals = [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 3)]
    result = report(arrivals, {"a": 3, "b": 4, "c": 2})
    assert result.sent == 9 and result.received == 6
    assert result.lost_seqs == {"b": [2], "c": [0, 1]}
    assert result.out_of_order == 0


def test_ledger_flags_numbers_never_sent() -> None:
    result = report([("a", 0), ("a", 7), ("stranger", 0)], {"a": 2})
    assert (result.unexpected, result.lost) == (2, 1)
    assert not result.exactly_once_in_order


def test_ledger_report_prints_what_was_lost() -> None:
    text = str(report([("a", 0)], {"a": 15}))
    assert (
        "lost 14" in text and "lost from a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] ... (+4 more)" in text
    )


def test_probe_round_trip_and_padding() -> None:
    data = probe("p1", 42, 123_456_789, size=64)
    assert len(data) == 64
    assert read_probe(data) == read_probe(data.decode()) == ("p1", 42, 123_456_789)
    assert read_probe(probe("p1", 0, 5)) == ("p1", 0, 5)


@pytest.mark.parametrize("junk", [b"", b"hello", b"p1 x 5", b"p1 5", "\u00e9 1 2".encode()])
def test_probe_junk_is_malformed(junk: bytes) -> None:
    with pytest.raises(MalformedMessage):
        read_probe(junk)


def test_end_marker() -> None:
    assert read_end(end_marker("p0", 1000)) == ("p0", 1000)
    assert read_end(probe("p0", 1, 2)) is None
    with pytest.raises(MalformedMessage):
        read_end(b"END p0")


async def test_pacer_keeps_the_schedule() -> None:
    rate, count = 2_000, 400
    started = time.perf_counter_ns()
    stamps = [t async for batch in paced(rate, count) for t in batch]
    elapsed_s = (time.perf_counter_ns() - started) / 1e9
    assert len(stamps) == count
    gaps = np.diff(stamps)
    assert np.all(np.abs(gaps - 1e9 / rate) <= 1)  # exactly 1/rate apart, to the ns
    assert elapsed_s >= (count - 1) / rate  # it never runs ahead of the schedule


async def test_pacer_hands_over_what_is_due_after_a_stall() -> None:
    batches = []
    async for batch in paced(rate=10_000, count=200, precise=False):
        if not batches:
            time.sleep(0.01)  # noqa: ASYNC251 (the sender stalls: 100 messages fall due)
        batches.append(batch)
    assert sum(map(len, batches)) == 200
    assert max(map(len, batches)) >= 90  # ... and they go at once, with their due times


def test_pacer_refuses_a_meaningless_rate() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        asyncio.run(anext(paced(0, 10)))


def test_stats_window_reports_rate_and_window_percentiles() -> None:
    meter, recorder, since = ThroughputMeter(), LatencyRecorder(), {}
    meter.started_ns -= 10**9
    meter.add(100)
    for latency_ms in range(1, 101):
        recorder.record(0, now_ns=latency_ms * 10**6)
    first = window(meter, recorder, since)
    assert first["count"] == 100 and 50 < first["rate"] <= 100
    assert (first["p50_ms"], first["p99_ms"]) == (50.0, 99.0)
    recorder.record(0, now_ns=7 * 10**6)
    second = window(meter, recorder, since)
    assert (second["p50_ms"], second["p99_ms"]) == (7.0, 7.0)  # this window only
    assert "p50_ms" not in window(meter, recorder, since)  # nothing new: no latency
