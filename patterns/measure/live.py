"""Live plots in JupyterLab: one figure, shown once, redrawn in place while a run goes on.

    plot = LivePlot("One-way messages")
    async with plot:                       # shows the figure, starts redrawing it
        result = await plot.follow("ZeroMQ", receiver.reports())
    # the figure's last frame stays in the notebook; the figure itself is closed

The figure is built with `plt.ioff()` so the inline backend does not draw it a second time
at the end of the cell, rendered to PNG by us at a fixed size and DPI (so each redraw costs
a known few tens of milliseconds), and replaced in place through a display handle. The
redraw task is started and cancelled by `async with`, in the cell that runs the workload,
so it behaves the same in JupyterLab and under nbval.
"""

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import matplotlib.pyplot as plt
from IPython.display import Image, display
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

REFRESH_S = 0.5
DPI = 80


class LiveFigure:
    """A figure redrawn every `refresh_s` while inside `async with`; subclasses draw."""

    def __init__(self, fig: Figure, refresh_s: float = REFRESH_S) -> None:
        self.fig = fig
        self.refresh_s = refresh_s
        self._handle: Any = None
        self._task: asyncio.Task | None = None

    def draw(self) -> None:
        """Update the artists from the data gathered so far (the subclass's job)."""

    def _png(self) -> Image:
        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=DPI)
        return Image(buffer.getvalue())

    def refresh(self) -> None:
        self.draw()
        if self._handle is not None:
            self._handle.update(self._png())

    async def _redraw_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            self.refresh()

    async def __aenter__(self) -> "LiveFigure":
        self.draw()
        self._handle = display(self._png(), display_id=True)
        self._task = asyncio.create_task(self._redraw_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.refresh()
        plt.close(self.fig)


class LivePlot(LiveFigure):
    """Throughput (left) and windowed p50/p99 latency (right) of one or more series over time.

    Feed it the "stats" reports of `patterns.measure.stats`: `add(series, stats)`, or let
    `follow` read a child's reports until its "result".
    """

    def __init__(self, title: str, latency: bool = True, unit: str = "messages/s") -> None:
        with plt.ioff():
            fig, axes = plt.subplots(
                1, 2 if latency else 1, figsize=(11, 3.4), layout="constrained", squeeze=False
            )
        super().__init__(fig)
        fig.suptitle(title)
        self.rate_axes = axes[0][0]
        self.rate_axes.set(xlabel="seconds into the run", ylabel=unit)
        self.latency_axes = axes[0][1] if latency else None
        if self.latency_axes is not None:
            self.latency_axes.set(
                xlabel="seconds into the run", ylabel="latency, ms (log)", yscale="log"
            )
            # decades as decimals (0.1, 1, 10), not 10⁻¹; minor ticks unlabelled
            self.latency_axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            self.latency_axes.yaxis.set_minor_formatter(NullFormatter())
        self._data: dict[str, dict[str, list[float]]] = {}
        self._lines: dict[tuple[str, str], Any] = {}

    def add(self, series: str, stats: dict[str, Any]) -> None:
        data = self._data.setdefault(series, {"t": [], "rate": [], "lt": [], "p50": [], "p99": []})
        data["t"].append(stats["t"])
        data["rate"].append(stats["rate"])
        if "p50_ms" in stats:
            data["lt"].append(stats["t"])
            data["p50"].append(max(stats["p50_ms"], 1e-3))
            data["p99"].append(max(stats["p99_ms"], 1e-3))

    def _line(self, series: str, role: str) -> Any:
        if (series, role) not in self._lines:
            color = f"C{list(self._data).index(series) % 10}"
            if role == "rate":
                (line,) = self.rate_axes.plot([], [], color=color, label=series)
                self.rate_axes.legend(loc="best", fontsize="small")
            else:
                assert self.latency_axes is not None
                style = "-" if role == "p50" else "--"
                (line,) = self.latency_axes.plot(
                    [], [], style, color=color, label=f"{series} {role}"
                )
                self.latency_axes.legend(loc="best", fontsize="small", ncols=2)
            self._lines[series, role] = line
        return self._lines[series, role]

    def draw(self) -> None:
        for series, data in self._data.items():
            self._line(series, "rate").set_data(data["t"], data["rate"])
            if self.latency_axes is not None and data["lt"]:
                self._line(series, "p50").set_data(data["lt"], data["p50"])
                self._line(series, "p99").set_data(data["lt"], data["p99"])
        for axes in filter(None, (self.rate_axes, self.latency_axes)):
            axes.relim()
            axes.autoscale_view()

    async def follow(self, series: str, reports: AsyncIterator[dict]) -> dict:
        """Plot a child's "stats" reports as they come; return its "result" report."""
        async for report in reports:
            if report["event"] == "stats":
                self.add(series, report)
            elif report["event"] == "result":
                return report
        raise RuntimeError(f"{series}: the reports ended without a result")
