"""python -m patterns.bench NAME [--json] [--quick]: run one benchmark, print its result."""

import asyncio
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from types import ModuleType

import patterns.bench
from patterns import cli


def benchmarks() -> dict[str, ModuleType]:
    """The modules of this package that are benchmarks: those with `run(quick)`."""
    names = sorted(m.name for m in pkgutil.iter_modules(patterns.bench.__path__))
    found = {name: importlib.import_module(f"patterns.bench.{name}") for name in names}
    return {name: module for name, module in found.items() if hasattr(module, "run")}


def main() -> int:
    found = benchmarks()
    parser = cli.Parser(
        prog="python -m patterns.bench",
        description="Run a benchmark and print its result. Each benchmark is a role:"
        " `python -m patterns.bench NAME --help`.",
    )
    roles = parser.roles()
    for name, module in found.items():
        role = roles.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        role.add_argument("--json", action="store_true", help="print one JSON object")
        role.add_argument("--quick", action="store_true", help="a small run (the test suite's)")
    options = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(found[options.role].run(quick=options.quick))
    result = {
        "benchmark": options.role,
        "quick": options.quick,
        **result,
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if options.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
