"""Every transport under faults, against the real brokers: what the ledger must show.

One quick run of every fault (`under_faults(quick=True)`), shared by the tests; each test
asserts what is structural (what a transport guarantees, what Pub/Sub loses), never a
timing.
"""

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from patterns import processes
from patterns.compare import faults
from patterns.faults import NodeUnavailable, RabbitNode

KEYS = {"shape", "sent", "delivered", "lost", "duplicated", "reordered", "measured", "detail"}
# messages in flight around a fault's edges, on a busy 2-core machine: what was published
# in half a second before it began or after it was over
EDGE = int(faults.RATE * 0.5)


@pytest.fixture(scope="module")
def results() -> dict:
    async def run() -> dict:
        try:
            return await faults.under_faults(quick=True)
        finally:
            await processes.stop_all()

    return asyncio.run(run())


def test_every_fault_runs_on_its_transports_and_says_what_happened(results: dict) -> None:
    assert set(results) == set(faults.FAULTS)
    for fault, transports in faults.FAULTS.items():
        assert set(results[fault]) == set(transports)
        for transport, result in results[fault].items():
            assert set(result) >= KEYS, (fault, transport)
            assert result["shape"] == faults.shape_of(fault, transport)
            assert isinstance(result["detail"], str) and result["detail"]
            for part in (result, result.get("fanout", {}), result.get("aof", {})):
                assert "consumer_failures" not in part, (fault, transport, part)
            if result["measured"]:
                counted = result["delivered"] + result["lost"]
                assert counted == result["sent"] > 0, (fault, transport, result)


def test_sigkill_loses_nothing_where_a_broker_redelivers(results: dict) -> None:
    killed = results["sigkill"]
    for transport in ("amqp", "streams"):  # a work queue, and a subscriber started again
        assert killed[transport]["lost"] == 0, killed[transport]
        assert killed[transport]["fanout"]["lost"] == 0, killed[transport]["fanout"]
    assert killed["streams"]["fanout"]["duplicated"] == 0  # it read on after its last entry
    assert killed["zmq"]["duplicated"] == 0  # PUSH never sends anything twice
    for pubsub in (killed["redis"], killed["zmq"]["fanout"]):  # nothing kept for the gone
        away = pubsub["published_while_away"]
        assert away > 0 and away <= pubsub["lost"] <= away + EDGE, pubsub
        assert pubsub["others_lost"] == 0


def test_a_cut_connection_loses_what_pubsub_published_while_away(results: dict) -> None:
    cut = results["cut"]
    pubsub = cut["redis"]
    # everything published while the proxy refused connections is lost, and no more than
    # what was published from the cut until the subscriber had subscribed again
    assert 0 < pubsub["published_while_cut"] <= pubsub["lost"], pubsub
    assert pubsub["lost"] <= pubsub["published_while_away"] + EDGE, pubsub
    assert pubsub["lost_last"] - pubsub["lost_first"] + 1 == pubsub["lost"]  # one gap
    assert cut["amqp"]["lost"] == 0, cut["amqp"]
    assert cut["streams"]["lost"] == 0, cut["streams"]
    assert cut["streams"]["duplicated"] == 0
    for transport, result in cut.items():
        assert result["others_lost"] == 0, transport  # the subscriber not cut off


def test_a_restart_keeps_a_stream_only_with_its_append_only_file(results: dict) -> None:
    streams = results["restart"]["streams"]
    assert streams["aof"]["lost"] == 0, streams
    assert streams["backlog_at_restart"] > 0
    # what the reader had not read yet was lost with the stream (it reads 10 at a time)
    backlog = streams["backlog_at_restart"]
    assert backlog - faults.RESTART_COUNT - EDGE <= streams["lost"] <= backlog + EDGE, streams
    assert results["restart"]["redis"]["lost"] > 0


def test_a_crashed_rabbitmq_node_keeps_its_durable_queue(results: dict) -> None:
    rabbit = results["restart"]["amqp"]
    if shutil.which("rabbitmq-server") and os.getuid() == 0:  # a private node can start here
        assert rabbit["measured"] and rabbit["lost"] == 0 and rabbit["duplicated"] > 0, rabbit
        assert rabbit["backlog_at_restart"] > 0 and rabbit["published_while_away"] > 0, rabbit
    else:
        assert rabbit["measured"] is False and rabbit["docs"], rabbit


async def test_where_no_rabbitmq_node_can_start_the_restart_is_what_the_docs_promise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cannot_start(node: RabbitNode, timeout: float = 0.0) -> float:
        raise NodeUnavailable("rabbitmq-server is not installed on this machine")

    monkeypatch.setattr(RabbitNode, "start", cannot_start)
    result = await faults.run_fault("restart", "amqp", quick=True)
    assert result["measured"] is False and result["docs"], result
    assert "not installed" in result["detail"]


def test_a_slow_subscriber_costs_the_other_nothing(results: dict) -> None:
    slow = results["slow"]
    for transport in ("redis", "amqp", "streams"):
        assert slow[transport]["lost"] == 0, slow[transport]
        assert slow[transport]["backlog_peak"] > 0
    for transport, result in slow.items():
        assert result["others_lost"] == 0, transport


def test_the_command_line_rejects_a_transport_without_a_fault() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "patterns.compare.faults", "run", "--transport", "zmq"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
