"""Notebook 11's load half and decision table, against the real brokers.

`python -m patterns.compare --json --quick --only load` runs once (the faults half has
tests/test_compare_faults.py); the tests assert what is structural: every shape on every
transport, nothing lost under load, every open-loop step delivered, the backlog held.
Throughput and latency are printed by the notebook, never asserted here.
"""

import json
import subprocess
import sys

import pytest

from patterns.compare import load, table


@pytest.fixture(scope="module")
def loaded() -> dict:
    run = subprocess.run(
        [sys.executable, "-m", "patterns.compare", "--json", "--quick", "--only", "load"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def test_every_shape_runs_on_every_transport_that_carries_it(loaded: dict) -> None:
    results = loaded["load"]
    assert loaded["scale"] == "quick" and results["size"] == load.SIZE
    for shape, transports in load.SHAPES.items():
        assert list(results[shape]["rates"]) == list(load.RATES[shape])
        assert set(results[shape]["transports"]) == set(transports)
        for transport, result in results[shape]["transports"].items():
            assert result["throughput"] > 0, (shape, transport)
            assert result["ours_cpu_per_1000"] > 0, (shape, transport)
            if transport == "zmq":  # no broker; the others' may be None if it is elsewhere
                assert result["broker_cpu_per_1000"] is None, (shape, transport)


def test_nothing_is_lost_under_load_and_every_offered_step_arrives(loaded: dict) -> None:
    for shape in load.SHAPES:
        copies = load.CONSUMERS[shape] if shape == "fanout" else 1
        for transport, result in loaded["load"][shape]["transports"].items():
            assert result["lost"] == result["duplicated"] == 0, (shape, transport, result)
            assert not result["reordered"], (shape, transport, result)
            steps = result["open_loop"]
            assert [step["offered"] for step in steps] == list(load.RATES[shape])
            for step in steps:
                assert step["delivered"] == step["sent"] * copies, (shape, transport, step)
                assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["p999_ms"], step


def test_the_broker_holds_a_backlog_of_unread_messages(loaded: dict) -> None:
    backlog = loaded["load"]["backlog"]
    assert backlog["count"] == load.BACKLOG[True]
    for transport in ("streams", "amqp"):
        assert backlog[transport]["held"] == backlog["count"], backlog[transport]
        assert backlog[transport]["growth_bytes"] > 0, backlog[transport]
    assert backlog["zmq"]["growth_bytes"] is None


def test_only_a_stream_keeps_messages_for_a_reader_that_comes_late(loaded: dict) -> None:
    read = loaded["load"]["replay"]
    assert all(read[t]["first_reader"] == read[t]["sent"] > 0 for t in read), read
    assert read["streams"]["late_reader"] == read["streams"]["sent"], read
    assert read["redis"]["late_reader"] == read["zmq"]["late_reader"] == 0, read
    assert read["amqp"]["late_reader"] == 0, read  # a queue bound after the messages
    assert read["amqp"]["stream_queue_late_reader"] == read["amqp"]["sent"], read
    rows = {row["transport"]: row for row in loaded["rows"]}
    assert rows["Redis Streams"]["replay/history"].startswith("yes: "), rows
    assert rows["Redis Pub/Sub"]["replay/history"].startswith("none: "), rows


def test_the_table_is_computed_from_the_results(loaded: dict) -> None:
    figures = loaded["table"]
    assert set(figures) == set(table.ROWS)
    assert figures["redis"]["throughput"] == {
        "fanout": loaded["load"]["fanout"]["transports"]["redis"]["throughput"]
    }
    assert set(figures["streams"]["throughput"]) == {"fanout", "workqueue", "reqrep"}
    rows = loaded["rows"]
    assert [row["transport"] for row in rows] == [table.NAMES[t] for t in table.ROWS]
    assert all(row["delivery seen"] == "not measured (no fault run)" for row in rows)
    assert len(loaded["choose_when"]) == len(table.ROWS)


def fault(lost: int, duplicated: int = 0, **more: object) -> dict:
    return (
        {"sent": 100, "lost": lost, "duplicated": duplicated, "reordered": 0}
        | {
            "measured": True,
            "detail": "",
        }
        | more
    )


def test_the_rules_turn_fault_counts_into_guarantees(loaded: dict) -> None:
    faults = {
        "sigkill": {"zmq": fault(3), "amqp": fault(0), "streams": fault(0), "redis": fault(40)},
        "cut": {"zmq": fault(30), "amqp": fault(0, 2), "streams": fault(0), "redis": fault(50)},
        "restart": {
            "redis": fault(50, aof={"lost": 50}),
            "streams": fault(20, aof={"lost": 0}),
            "amqp": fault(0, measured=False, docs=["https://www.rabbitmq.com/docs/reliability"]),
        },
    }
    figures = table.figures(loaded["load"], faults)
    rows = {row["transport"]: row for row in table.rows(figures)}
    assert (
        rows["ZeroMQ"]["delivery seen"]
        == "at most once: lost 3 after a SIGKILL, 30 after a 2 s cut"
    )
    assert rows["AMQP (RabbitMQ)"]["delivery seen"].endswith("2 duplicated")
    assert (
        rows["Redis Streams"]["persistence"]
        == "lost 20 of 100 on a restart without AOF, 0 with AOF"
    )
    assert rows["AMQP (RabbitMQ)"]["persistence"].startswith("documented, not measured")
    assert rows["ZeroMQ"]["persistence"].startswith("none: no broker")
    faults["restart"]["amqp"] = fault(0, 7)  # measured: a private node killed, started again
    crashed = {row["transport"]: row for row in table.rows(table.figures(loaded["load"], faults))}
    assert crashed["AMQP (RabbitMQ)"]["persistence"] == (
        "lost 0 of 100 when the broker was killed (SIGKILL) and started again, 7 duplicated"
    )
    advice = dict(zip(table.ROWS, table.choose_when(figures), strict=True))
    assert (
        "no message may be lost" in advice["streams"] and "lost 3 after a SIGKILL" in advice["zmq"]
    )
