"""Small conveniences for the notebooks."""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from IPython.display import Markdown, display


def show(*objects: Callable | type | Any) -> None:
    """Show the real source of functions, classes or modules, so prose and code never drift."""
    for obj in objects:
        display(Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```"))


def table(rows: Sequence[dict[str, Any]]) -> None:
    """A list of same-keyed dicts as a Markdown table (numbers formatted with thousands)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[key]) for key in header) + " |" for row in rows]
    display(Markdown("\n".join(lines)))
