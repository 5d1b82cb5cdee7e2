"""The pub/sub transports under the load harness, and how each one loses (or keeps) messages."""

import asyncio
import uuid

import pytest

from patterns import config, processes
from patterns.chat import instances
from patterns.faults import Proxy
from patterns.measure import LedgerReport
from patterns.pubsub import load
from patterns.pubsub.sandbox import private_redis


@pytest.fixture
async def topic():
    name = f"test:pubsub:{uuid.uuid4().hex}"
    yield name
    await instances.clean(name)


@pytest.mark.parametrize("transport", load.TRANSPORTS)
@pytest.mark.parametrize("impl", ["ours", "raw"])
async def test_every_subscriber_gets_every_message_once_in_order(
    transport: str, impl: str, topic: str
) -> None:
    result = await load.run(transport, topic, 2_000, subscribers=3, rate=4_000, impl=impl)
    ledger = LedgerReport(**result["ledger"])
    assert ledger.exactly_once_in_order, ledger
    assert (ledger.sent, ledger.received) == (6_000, 6_000)
    assert result["latency"]["count"] == 6_000 and result["malformed"] == 0


async def test_zmq_slow_joiner_loses_the_first_messages_and_a_handshake_fixes_it(topic) -> None:
    late = await load.run("zmq", topic, 2_000, rate=10_000, handshake=False)
    lost = late["ledger"]["lost_seqs"].get("0", [])
    assert lost and lost == list(range(len(lost)))  # the first ones, and only those
    handshake = await load.run("zmq", topic, 2_000, rate=10_000)
    assert handshake["ledger"]["lost"] == 0


async def test_zmq_drops_for_a_slow_subscriber_at_the_high_water_mark(topic) -> None:
    # 10 kB messages: 100 MB a second outgrows the kernel's socket buffers (megabytes on
    # loopback, which took all of 1 kB ones in some runs) as well as the high-water mark
    result = await load.run(
        "zmq", topic, 10_000, rate=10_000, size=10_000, hwm=100, work_ms=0.5, idle=2
    )
    ledger = result["ledger"]
    assert ledger["lost"] > 0 and ledger["duplicated"] == ledger["out_of_order"] == 0
    assert ledger["received"] + ledger["lost"] == 10_000


async def test_zmq_publisher_that_outruns_its_subscriber_delivers_its_backlog_on_close(
    topic,
) -> None:
    # published at full speed, read at 0.2 ms a message: the publisher closes with most of
    # them still queued, below the high-water mark
    result = await load.run("zmq", topic, 5_000, hwm=5_001, work_ms=0.2)
    assert LedgerReport(**result["ledger"]).exactly_once_in_order, result["ledger"]


async def test_redis_pubsub_loses_what_was_published_while_disconnected(topic) -> None:
    outage, result = await through_an_outage("redis", topic)
    assert outage.states[:2] == ["lost", "retrying"] or outage.states[0] == "lost"
    assert "reconnected" in outage.states
    lost = result["ledger"]["lost_seqs"].get("0", [])
    assert lost and lost == list(range(lost[0], lost[0] + len(lost)))  # one gap, exactly
    assert result["ledger"]["duplicated"] == 0


async def through_an_outage(transport: str, topic: str) -> tuple["Outage", dict]:
    """3,000 messages at 1,000/s to a subscriber whose Redis connection is cut once, through
    a proxy, for half a second after the first 1,000."""
    async with Proxy(config.REDIS_URL) as proxy:
        outage = Outage(proxy, after=1_000)
        result = await load.run(
            transport,
            topic,
            3_000,
            rate=1_000,
            subscriber_env={"REDIS_URL": proxy.url},
            on_report=outage,
        )
    return outage, result


class Outage:
    """Cut the proxy once `after` messages have arrived, for half a second."""

    def __init__(self, proxy: Proxy, after: int) -> None:
        self.proxy, self.after = proxy, after
        self.task: asyncio.Task | None = None
        self.states: list[str] = []

    def __call__(self, report: dict) -> None:
        if report["event"] == "state":
            self.states.append(report["state"])
        elif report["event"] == "stats" and report["count"] >= self.after and not self.task:
            self.task = asyncio.create_task(self.cut())

    async def cut(self) -> None:
        await self.proxy.cut()
        await asyncio.sleep(0.5)  # the outage itself, not a wait for readiness
        await self.proxy.resume()


async def test_redis_disconnects_a_slow_subscriber_at_its_output_buffer_limit(topic) -> None:
    states: list[str] = []

    def note(report: dict) -> None:
        states.extend([report["state"]] if report["event"] == "state" else [])

    async with private_redis("client-output-buffer-limit", "pubsub 256kb 0 0") as url:
        # 4 kB messages: a backlog that outgrows the kernel's socket buffers, then Redis's limit
        result = await load.run(
            "redis",
            topic,
            10_000,
            rate=10_000,
            size=4_000,
            work_ms=1,
            idle=2,
            env={"REDIS_URL": url},
            on_report=note,
        )
    assert result["ledger"]["lost"] > 0 and "lost" in states


async def test_a_private_redis_is_gone_afterwards() -> None:
    async with private_redis() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_streams_subscriber_resumes_without_loss_or_duplicates(topic) -> None:
    outage, result = await through_an_outage("streams", topic)
    assert "reconnected" in outage.states
    assert LedgerReport(**result["ledger"]).exactly_once_in_order


async def test_a_chat_server_under_load_over_websockets() -> None:
    async with processes.children() as started:
        (chat,) = await instances.start(started, "local", 1, "unused")
        result = await load.run("ws", chat.ready["url"], 1_000, subscribers=2, rate=2_000)
    assert LedgerReport(**result["ledger"]).exactly_once_in_order
