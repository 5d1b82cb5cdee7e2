"""python -m patterns.bench NAME [--json] [--quick]: run one benchmark, print its result."""

import argparse
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


def benchmarks() -> dict[str, ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(patterns.bench.__path__) if m.name[0] != "_"]
    return {name: importlib.import_module(f"patterns.bench.{name}") for name in sorted(names)}


def main() -> int:
    found = benchmarks()
    listing = "\n".join(
        f"  {name:<8} {(m.__doc__ or '').splitlines()[0]}" for name, m in found.items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m patterns.bench",
        description="Run a benchmark and print its result.",
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(found))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a small run (the test suite's)")
    options = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(found[options.name].run(quick=options.quick))
    result = {
        "benchmark": options.name,
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
