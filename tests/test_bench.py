import json

from tests.conftest import bench


def test_help_lists_every_benchmark() -> None:
    run = bench("--help")
    assert run.returncode == 0
    for name in ("kit", "oneway", "tasks", "pubsub", "reqrep", "amqpclients"):
        assert name in run.stdout


def test_kit_prints_one_json_object_with_both_costs() -> None:
    # the numbers are checked by running the benchmark, not here: a timed test is flaky
    run = bench("kit", "--json", "--quick")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["benchmark"] == "kit" and result["quick"] is True
    assert result["latency_record_ns"] > 0 and result["ledger_record_ns"] > 0
    assert isinstance(result["meets_target"], bool)


def test_amqpclients_consumes_the_same_queue_with_each_client() -> None:
    run = bench("amqpclients", "--json", "--quick")
    assert run.returncode == 0, run.stderr
    rates = json.loads(run.stdout)["consumed_per_s"]
    assert set(rates) == {"aiormq", "aio-pika", "pika (asyncio)", "pika (blocking)"}
    assert all(rate > 0 for rate in rates.values())
