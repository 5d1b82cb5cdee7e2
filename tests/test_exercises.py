"""Every exercise's check fails on the notebook's empty stub and passes on its solution.

The stubs are the notebooks' code cells tagged `exercise`; the solutions are the cells
tagged `solution` in `notebooks/solutions/`. Each is run as the notebook runs it, against
the real brokers, and the verdict `check` gave is read back.
"""

import ast
import json
from pathlib import Path

import pytest

from patterns.exercises import checking
from patterns.exercises.checking import CHECKERS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def tagged_cells(notebook: Path, tag: str) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return [
        "".join(cell["source"])
        for cell in cells
        if cell["cell_type"] == "code" and tag in cell.get("metadata", {}).get("tags", [])
    ]


def with_cells(tag: str, folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.ipynb") if tagged_cells(path, tag))


async def verdicts_of(sources: list[str], setup: str = "") -> list[checking.Verdict]:
    """Run the cells as a notebook would (top-level await), one namespace; their verdicts."""
    namespace: dict = {"check": checking.check}
    given = len(checking.verdicts)
    for source in [setup, *sources]:
        code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if (pending := eval(code, namespace)) is not None:
            await pending
    return checking.verdicts[given:]


def setup_of(notebook: Path) -> str:
    """A solutions notebook's untagged code cells (its imports). An executed notebook's cells
    carry the timing nbconvert records in their metadata: only the tags tell them apart."""
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join(
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and not c["metadata"].get("tags")
    )


@pytest.mark.parametrize("notebook", with_cells("exercise", NOTEBOOKS), ids=lambda p: p.stem[:2])
async def test_every_stub_is_checked_and_found_not_done(notebook: Path) -> None:
    verdicts = await verdicts_of(tagged_cells(notebook, "exercise"))
    assert verdicts and all(not v.passed for v in verdicts), verdicts
    assert {v.said for v in verdicts} == {"the stub still raises NotImplementedError"}


@pytest.mark.parametrize(
    "notebook", with_cells("solution", NOTEBOOKS / "solutions"), ids=lambda p: p.stem[:2]
)
async def test_every_solution_passes_its_check(notebook: Path) -> None:
    stubs = tagged_cells(NOTEBOOKS / notebook.name, "exercise")
    solutions = tagged_cells(notebook, "solution")
    assert len(solutions) == len(stubs)
    verdicts = await verdicts_of(solutions, setup_of(notebook))
    assert verdicts and all(v.passed for v in verdicts), [str(v) for v in verdicts]


def test_every_checker_has_a_stub_and_a_solution() -> None:
    def ids(tag: str, folder: Path) -> set[str]:
        found = set()
        for notebook in with_cells(tag, folder):
            for source in tagged_cells(notebook, tag):
                found |= {e for e in CHECKERS if f'check("{e}"' in source}
        return found

    assert ids("exercise", NOTEBOOKS) == set(CHECKERS)
    assert ids("solution", NOTEBOOKS / "solutions") == set(CHECKERS)
