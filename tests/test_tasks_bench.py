"""The tasks benchmark runs and prints its comparisons (its numbers are checked by running
it on a quiet machine, never here: a timed test on a shared machine is flaky)."""

import asyncio
import json

from patterns.bench.tasks import EMPTY_TASK, NOWHERE, raw_result, swapping
from patterns.tasks import wire
from patterns.tasks.space import SHA1S
from tests.conftest import bench


def test_the_tasks_benchmark_prints_every_comparison_per_transport() -> None:
    run = bench("tasks", "--json", "--quick", timeout=280)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["benchmark"] == "tasks" and isinstance(result["meets_targets"], bool)
    assert result["plain_loops"]["speedup"] > 0  # the machine's ceiling for two workers
    for transport in ("zmq", "amqp", "streams"):
        measured = result[transport]
        for key in ("hash_ratio", "hash_ratio_hashlib", "hash_ratio_per_cpu_s", "speedup"):
            assert measured[key] > 0, (transport, key)
        overhead = measured["overhead"]
        assert overhead["idiomatic_tasks_per_s"] > 0 and overhead["raw_tasks_per_s"] > 0
        assert overhead["ratio_of"] in ("idiomatic", "fast")
        assert measured["overhead_ratio"] == overhead["ratio"] >= overhead["idiomatic_ratio"]
        assert measured["worker_hashes_per_s"] > 0
        assert set(measured["worker_sha1"].split("/")) <= set(SHA1S)  # the one it timed faster


def test_paired_rounds_swap_which_side_goes_first() -> None:
    """A machine that drifts faster or slower over a round favours neither side."""
    order: list[str] = []

    async def side(name: str) -> str:
        order.append(name)
        return name

    firsts, seconds = asyncio.run(swapping(3, lambda: side("one"), lambda: side("two")))
    assert firsts == ["one"] * 3 and seconds == ["two"] * 3
    assert order == ["one", "two", "two", "one", "one", "two"]


def test_the_raw_loops_publish_what_the_worker_reports_for_an_empty_task() -> None:
    """The overhead compares our code, not a smaller message for the broker to carry."""
    ours = wire.encode(wire.Done("w1", "empty", NOWHERE, 1, 0, 0))
    raw = raw_result(json.loads(EMPTY_TASK))
    assert json.loads(raw).keys() == json.loads(ours).keys()
    assert abs(len(raw) - len(ours)) <= len("raw") - len("w1")
