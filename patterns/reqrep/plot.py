"""The live figure of an open-loop run: throughput, latency over time, and the knee.

Left, the replies per second against the offered rate (dashed), both on a log scale so
that a collapse to a few hundred replies per second shows as plainly as the climb: they
track it until the system cannot keep up. Middle, each quarter second's p50 / p99 / p99.9
round trip. Right, one point per offered rate (p50, p99, p99.9 of the whole step): latency
stays flat while there is spare capacity, then climbs steeply at the knee. One colour per
transport, one line style per percentile.
"""

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from patterns.measure.live import LiveFigure

PERCENTILES = (("p50_ms", "-", "p50"), ("p99_ms", "--", "p99"), ("p999_ms", ":", "p99.9"))


class LoadPlot(LiveFigure):
    def __init__(self, title: str) -> None:
        with plt.ioff():
            fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
        super().__init__(fig)
        fig.suptitle(title)
        self.rate_axes, self.time_axes, self.knee_axes = axes
        self.rate_axes.set(
            xlabel="seconds into the run",
            ylabel="replies/s, log (dashed: offered; 1: none)",
            yscale="log",
        )
        self.time_axes.set(xlabel="seconds into the run", ylabel="round trip, ms (log)")
        self.knee_axes.set(xlabel="offered requests/s (log)", ylabel="round trip, ms (log)")
        self.time_axes.set_yscale("log")
        self.knee_axes.set(xscale="log", yscale="log")
        styles = [Line2D([], [], color="gray", linestyle=s, label=n) for _, s, n in PERCENTILES]
        for percentile_axes in (self.time_axes, self.knee_axes):
            percentile_axes.legend(handles=styles, loc="upper left", fontsize="small")
        self.windows: dict[str, list[dict]] = {}
        self.steps: dict[str, list[dict]] = {}
        self._lines: dict[tuple[str, str], Any] = {}

    def _line(self, axes: Any, series: str, role: str, style: str) -> Any:
        if (series, role) not in self._lines:
            color = f"C{list(self.windows).index(series) % 10}"
            marker = "o" if axes is self.knee_axes else None
            label = series if role == "rate" else None
            (self._lines[series, role],) = axes.plot(
                [], [], style, color=color, marker=marker, label=label
            )
            if label:
                axes.legend(loc="upper left", fontsize="small")
        return self._lines[series, role]

    def draw(self) -> None:
        for series, windows in self.windows.items():
            t = [w["t"] for w in windows]
            rates = [max(w["rate"], 1) for w in windows]  # a window with none: 1 on a log scale
            self._line(self.rate_axes, series, "rate", "-").set_data(t, rates)
            offered = [w["offered"] for w in windows]
            self._line(self.rate_axes, series, "offered", "--").set_data(t, offered)
            timed = [w for w in windows if "p50_ms" in w]
            steps = self.steps.get(series, [])
            for key, style, _ in PERCENTILES:
                self._line(self.time_axes, series, key, style).set_data(
                    [w["t"] for w in timed], [max(w[key], 1e-3) for w in timed]
                )
                self._line(self.knee_axes, series, f"knee {key}", style).set_data(
                    [s["offered"] for s in steps], [max(s[key], 1e-3) for s in steps]
                )
        for axes in (self.rate_axes, self.time_axes, self.knee_axes):
            axes.relim()
            axes.autoscale_view()

    async def follow(self, series: str, reports: Any) -> dict:
        """Plot a load child's reports as they come; return its "result" report."""
        self.windows.setdefault(series, [])
        async for report in reports:
            if report["event"] == "stats":
                self.windows[series].append(report)
            elif report["event"] == "step":
                self.steps.setdefault(series, []).append(report)
            elif report["event"] == "result":
                return report
        raise RuntimeError(f"{series}: the reports ended without a result")
