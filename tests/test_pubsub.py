"""The pub/sub transports under the load harness, and how each one loses (or keeps) messages."""

import asyncio
import uuid

import aio_pika
import pytest
import zmq
import zmq.asyncio

from patterns import clients, config, processes
from patterns.chat import instances
from patterns.faults import Proxy
from patterns.measure import LedgerReport
from patterns.pubsub import amqp_fanout, load, redis_pubsub, redis_streams, zmq_peers
from patterns.pubsub.sandbox import private_redis


@pytest.fixture
async def topic():
    name = f"test:pubsub:{uuid.uuid4().hex}"
    yield name
    await instances.clean(name)


IMPLEMENTATIONS = [
    (transport, impl)
    for transport in load.TRANSPORTS
    for impl in load.IMPLS
    if impl != "fast" or transport in load.FAST
]


@pytest.mark.parametrize(("transport", "impl"), IMPLEMENTATIONS)
async def test_every_subscriber_gets_every_message_once_in_order(
    transport: str, impl: str, topic: str
) -> None:
    result = await load.run(transport, topic, 1_000, subscribers=3, rate=2_000, impl=impl)
    ledger = LedgerReport(**result["ledger"])
    assert ledger.exactly_once_in_order, ledger
    assert (ledger.sent, ledger.received) == (3_000, 3_000)
    assert result["latency"]["count"] == 3_000 and result["malformed"] == 0


async def test_each_idiomatic_module_publishes_and_subscribes_in_a_few_lines(topic) -> None:
    """What a reader copies: publish(...), then `async with subscription(...)`."""
    async with clients.redis() as redis:
        async with redis_pubsub.subscription(redis, topic) as messages:
            assert await redis_pubsub.publish(redis, b"via pubsub", topic) == 1
            assert await anext(messages) == b"via pubsub"
        async with redis_streams.subscription(redis, topic) as entries:
            entry_id = await redis_streams.publish(redis, b"via a stream", topic)
            assert await anext(entries) == (entry_id, b"via a stream")
    context = zmq.asyncio.Context()
    try:
        publisher = zmq_peers.bind_publisher(context, "tcp://127.0.0.1:0")
        endpoint = publisher.getsockopt_string(zmq.LAST_ENDPOINT)
        async with zmq_peers.subscription(context, [endpoint]) as messages:
            await zmq_peers.wait_for_subscribers(publisher, 1)
            await zmq_peers.publish(publisher, b"peer to peer")
            assert await anext(messages) == b"peer to peer"
    finally:
        context.destroy(linger=0)
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        exchange = await amqp_fanout.declare_exchange(channel, topic)
        queue = f"{topic}.q"
        async with amqp_fanout.subscription(connection, queue, topic) as messages:
            await amqp_fanout.publish(exchange, b"fanned out")
            assert await anext(messages) == b"fanned out"


async def test_the_exchange_is_declared_as_the_books_amqplib_samples_declare_it(topic) -> None:
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        await amqp_fanout.declare_exchange(channel, topic)
        # assertExchange(name, "fanout") with amqplib's defaults: durable, not auto-deleted
        again = await channel.declare_exchange(
            topic, aio_pika.ExchangeType.FANOUT, durable=True, auto_delete=False
        )
        assert again.name == topic


async def test_a_stream_reader_says_when_entries_it_had_not_read_were_trimmed(topic) -> None:
    events: list[tuple[str, dict]] = []
    async with clients.redis() as redis:
        first = await redis_streams.publish(redis, b"m 0", topic, maxlen=100)
        async with redis_streams.subscription(
            redis, topic, first, count=100, on_event=lambda e, **f: events.append((e, f))
        ) as entries:
            for seq in range(1, 1_000):  # far more than the stream keeps, before reading on
                await redis_streams.publish(redis, f"m {seq}".encode(), topic, maxlen=100)
            _, message = await anext(entries)
    assert [e for e, _ in events] == ["subscribed", "trimmed"]
    assert message != b"m 1"  # the next one it had not read was trimmed away


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
    assert outage.states == ["resubscribed"]  # redis-py reconnected and resubscribed by itself
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
    assert result["ledger"]["lost"] > 0 and "resubscribed" in states


async def test_a_private_redis_is_gone_afterwards() -> None:
    async with private_redis() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_streams_subscriber_resumes_without_loss_or_duplicates(topic) -> None:
    outage, result = await through_an_outage("streams", topic)
    assert outage.task is not None and outage.task.done()  # it was cut, and came back
    assert LedgerReport(**result["ledger"]).exactly_once_in_order


async def test_a_chat_server_under_load_over_websockets() -> None:
    async with processes.children() as started:
        (chat,) = await instances.start(started, "local", 1, "unused")
        result = await load.run("ws", chat.ready["url"], 1_000, subscribers=2, rate=2_000)
    assert LedgerReport(**result["ledger"]).exactly_once_in_order
