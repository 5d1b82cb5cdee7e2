"""Benchmarks: `python -m patterns.bench NAME [--json] [--quick]`.

Each module of this package is one benchmark: an `async def run(quick: bool) -> dict`
whose docstring's first line is its summary in `--help`. A speed target is checked here,
by a command run on a quiet machine, never by a timed test.
"""
