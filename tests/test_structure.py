"""The package's shape: no import cycle, one client library per broker in the patterns, and
every `python -m` entry point speaking per role."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "patterns"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module of the package `name` imports, function-level imports included."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {t for t in targets if t.split(".")[0] == "patterns"}


def graph() -> dict[str, set[str]]:
    known = modules()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = set()
        for target in imports(path, name):
            module = resolve(target)
            # a submodule importing its own package (or the package itself) is no cycle
            if (
                module
                and module != name
                and not name.startswith(module + ".")
                and module != "patterns"
            ):
                edges[name].add(module)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_not_even_through_function_level_imports() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


FAST_CLIENTS = re.compile(r"^\s*(import|from) (pika|aiormq|hiredis)\b", re.M)


def test_only_fast_variants_and_benchmarks_use_other_clients() -> None:
    """AMQP is aio-pika, Redis is redis-py: pika, aiormq itself and hiredis only where speed
    is taught (`*_fast.py`) or measured (`patterns/bench/`)."""
    users = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if FAST_CLIENTS.search(path.read_text())
    }
    allowed = {u for u in users if u.endswith("_fast.py") or u.startswith("patterns/bench/")}
    assert users == allowed


def entry_points() -> list[str]:
    """Every module a reader can run with `python -m` (the child launcher aside)."""
    found = []
    for name, path in modules().items():
        if '__name__ == "__main__"' in path.read_text() or path.name == "__main__.py":
            found.append(name.removesuffix(".__main__"))
    return sorted(set(found) - {"patterns.processes"})


@pytest.mark.parametrize("module", entry_points())
def test_every_entry_point_answers_a_wrong_option_in_one_line(module: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
        )

    assert run("--help").returncode == 0
    wrong = run("--no-such-option")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
