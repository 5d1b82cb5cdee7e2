"""The pub/sub benchmark's quick run: every transport's implementations, side by side.

The figures are checked by running the benchmark (`python -m patterns.bench pubsub`) on a
quiet machine, not here: a timed test is flaky. This checks that it runs and says what
it measured, in the shape the docs quote."""

import json

from patterns.bench import pubsub
from patterns.pubsub import load


async def test_the_quick_benchmark_measures_idiomatic_fast_and_raw_per_transport() -> None:
    result = await pubsub.run(quick=True)
    json.dumps(result)  # what --json prints
    assert set(result["transports"]) == set(load.TRANSPORTS)
    for transport, figures in result["transports"].items():
        impls = ["idiomatic", "raw"] + (["fast"] if transport in load.FAST else [])
        for impl in impls:
            assert figures[f"{impl}_deliveries_per_s"] > 0
            assert figures[f"{impl}_p50_ms"] <= figures[f"{impl}_p99_ms"]
        assert figures["ratio_of"] in impls and figures["ratio"] > 0
        assert figures["idiomatic_ratio"] > 0
        assert ("fast_speedup" in figures) == (transport in load.FAST)
    assert isinstance(result["meets_target"], bool)
