"""The building blocks of notebook 00, against the real Redis and real ZeroMQ sockets."""

import uuid

import pytest
import redis.asyncio as aioredis

from patterns import config
from patterns.fundamentals import omission, oneway, oneway_fast, queues, styles


async def test_one_way_and_request_reply() -> None:
    assert await styles.one_way(["a", "b", "c"]) == ["a", "b", "c"]
    replies = await styles.request_reply(
        [{"a": 1, "b": 2}, {"a": 5, "b": 5}], lambda r: r["a"] + r["b"]
    )
    assert replies == [3, 10]
    assert "cannot be accomplished in current state" in await styles.send_twice_without_reply()


@pytest.fixture
async def redis_client():
    client = aioredis.from_url(config.REDIS_URL)
    keys: list[str] = []
    yield client, keys
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_a_queue_gives_each_item_to_one_consumer(redis_client) -> None:
    client, keys = redis_client
    keys.append(key := f"test:queue:{uuid.uuid4().hex}")
    items = [f"m{i}" for i in range(20)]
    taken = await queues.compete(client, key, items, consumers=3)
    assert sorted(item for items_taken in taken for item in items_taken) == sorted(
        items
    )  # all of them, each once
    assert await client.llen(key) == 0  # and gone from the queue


async def test_a_stream_gives_every_item_to_every_reader(redis_client) -> None:
    client, keys = redis_client
    keys.append(key := f"test:stream:{uuid.uuid4().hex}")
    items = [f"m{i}" for i in range(5)]
    assert await queues.replay(client, key, items, readers=3) == [items] * 3
    assert await client.xlen(key) == 5  # still there


@pytest.mark.parametrize("transport", oneway.TRANSPORTS)
async def test_one_way_delivers_everything_once_in_order(transport: str) -> None:
    result = await oneway.run(transport, count=5_000)
    ledger = result["ledger"]
    assert (ledger["sent"], ledger["received"], ledger["lost"]) == (5_000, 5_000, 0)
    assert ledger["duplicated"] == ledger["out_of_order"] == ledger["unexpected"] == 0
    assert result["latency"]["count"] == 5_000 and result["malformed"] == 0


@pytest.mark.parametrize("transport", oneway.TRANSPORTS)
async def test_open_loop_run_and_the_ledger_catches_injected_faults(transport: str) -> None:
    result = await oneway.run(
        transport, count=600, rate=2_000, drop=(0, 17, 599), duplicate=(5, 300)
    )
    ledger = result["ledger"]
    assert ledger["lost_seqs"] == {"p0": [0, 17, 599]}
    assert (ledger["lost"], ledger["duplicated"], ledger["out_of_order"]) == (3, 2, 0)
    assert ledger["received"] == 600 - 3 + 2


@pytest.mark.parametrize("fast", [False, True])
async def test_a_receiver_counts_junk_and_goes_on(fast: bool) -> None:
    frames = [b"junk", oneway.probe("p0", 0, 1), b"END p0 1"]

    async def messages():
        for frame in frames:
            yield frame

    async def batches():
        yield frames

    meter, latency, ledger = (
        oneway.ThroughputMeter(),
        oneway.LatencyRecorder(),
        oneway.DeliveryLedger(),
    )
    receive = oneway_fast.receive if fast else oneway.receive
    sent = await receive(batches() if fast else messages(), 1, meter, latency, ledger)
    assert sent == {"p0": 1, "malformed": 1}
    assert ledger.report({"p0": 1}).exactly_once_in_order


@pytest.mark.parametrize("impl", ["idiomatic", "fast", "raw"])
async def test_each_receiver_gets_every_message_once(impl: str) -> None:
    for transport in oneway.TRANSPORTS:
        result = await oneway.run(transport, 300, rate=3_000, impl=impl)
        assert result["ledger"]["lost"] == 0 and result["ledger"]["duplicated"] == 0
        assert result["latency"]["count"] == 300


async def test_coordinated_omission_hides_a_stall_from_a_closed_loop() -> None:
    closed = await omission.closed_loop(duration_s=1.5)
    opened = await omission.open_loop(duration_s=1.5, rate=400)
    stall_ns = omission.STALL_S * 1e9
    assert closed.max_ns >= stall_ns and opened.max_ns >= stall_ns  # both saw the stall once...
    assert closed.p99_ns < stall_ns / 10  # ...the closed loop's percentiles hide it
    assert opened.p99_ns > stall_ns / 2  # ...the open loop's show it
