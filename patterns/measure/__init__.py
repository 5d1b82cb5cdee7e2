"""The measuring kit every notebook shares.

* `ThroughputMeter`: messages counted at a point; rates from samples.
* `LatencyRecorder`: per-message latency into a preallocated array; nearest-rank percentiles.
* `paced`: open-loop load at a fixed offered rate, timed from each message's schedule.
* `DeliveryLedger`: per-producer sequence numbers -> lost, duplicated, out of order.
* `probe` / `read_probe`: the measured message every transport carries in benchmarks.
* `reporting`: a measuring child's live stats; `LivePlot` draws them in JupyterLab.
"""

from patterns.measure.latency import LatencyRecorder, LatencySummary, percentiles
from patterns.measure.ledger import DeliveryLedger, LedgerReport
from patterns.measure.pacer import paced
from patterns.measure.probe import end_marker, probe, read_end, read_probe
from patterns.measure.stats import reporting
from patterns.measure.throughput import ThroughputMeter

__all__ = [
    "DeliveryLedger",
    "LatencyRecorder",
    "LatencySummary",
    "LedgerReport",
    "ThroughputMeter",
    "end_marker",
    "paced",
    "percentiles",
    "probe",
    "read_end",
    "read_probe",
    "reporting",
]
