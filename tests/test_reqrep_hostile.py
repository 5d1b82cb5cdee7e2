"""Hostile input thrown at every replier over its real transport: it answers, or counts, and
goes on answering.

Each replier gets what its bare client library can send: random bytes, random JSON,
requests in the book's shape with values at and past their limits. Every message must be
accounted for (answered, an error reply, or counted as skipped or expired by the
replier), the replier must stay alive, and the next valid request must be answered.
"""

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patterns import clients, processes
from patterns.messages import MAX_BYTES
from patterns.reqrep import amqp, load, pipe, wire
from tests.reqrep_support import fresh_name

# hypothesis describes what it generates, and one of the limits is a message of over 1 MiB
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# an integer of more digits than Python converts (4,300): json.loads raises a plain ValueError
HUGE_INTEGER = b"7" * 5_000
SUM = b'{"a": 20, "b": 22}'
# the data of a request, at and past the limits of the book's sum
LIMITS = [
    b"",
    b" ",
    b"\x00",
    b"\xff\xfe\xfd",
    b"{}",
    b"[]",
    b"null",
    b'"\\ud800"',
    b"-0",
    b"1e400",
    b"NaN",
    b"-Infinity",
    b'{"a": ' + HUGE_INTEGER + b', "b": 1}',
    b'{"a": ' + b"9" * 4_300 + b', "b": ' + b"9" * 4_300 + b"}",  # the sum has 4,301 digits
    b'{"a": 1e308, "b": 1e308}',  # the sum is infinite: not JSON
    b'{"a": 1, "b": 2, "delay": -1}',
    b'{"a": 1, "b": 2, "delay": 60001}',
    b'{"a": 1, "b": 2, "delay": 1e400}',
    b'{"a": true, "b": 2}',
    b'{"a": 1, "b": 2, "delay": "5"}',
    b"[" * 100_000,
    b"[" + b"1," * (MAX_BYTES // 2) + b"1]",  # over the size limit
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    # keys of up to 3 characters: never "delay", so nothing waits
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=8,
)
DATA = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(range(len(LIMITS))).map(LIMITS.__getitem__),  # a short repr
)
IDS = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.just(""))


def envelope(request_id: Any, data: bytes, kind: str = "request") -> bytes:
    """The book's request envelope around `data`, whatever `data` holds."""
    head = json.dumps({"type": kind, "id": request_id})[:-1].encode()
    return head + b', "data": ' + data + b"}"


ENVELOPED = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.builds(envelope, IDS, DATA),
    st.builds(envelope, st.just("r"), DATA, st.sampled_from(["response", "", "request "])),
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALID = wire.request("valid", json.loads(SUM))


def is_the_valid_answer(reply: bytes) -> bool:
    """Is `reply` the envelope of the answer to the valid request, sent last?"""
    return wire.read_reply(reply) == ("valid", {"sum": 42}, None)


def fuzzed(runner: asyncio.Runner, strategy: st.SearchStrategy, exchange: Callable) -> None:
    """Run `exchange(list of messages)` in `runner`'s loop for each example of `strategy`."""

    @FUZZ
    @given(st.lists(strategy, min_size=1, max_size=16))
    def one_example(messages: list) -> None:
        runner.run(asyncio.wait_for(exchange(messages), 60))

    one_example()


async def stopped(replier: processes.Child) -> dict:
    await replier.stop()
    assert replier.returncode == 0, replier.log()
    return await replier.next_report("result")


# ---- ZeroMQ: a DEALER sends frames to the ROUTER ----------------------------------------


async def test_zmq_replier_answers_an_integer_too_long_for_python_and_goes_on() -> None:
    async with processes.children() as started:
        started.append(await load.start_replier("zmq", None))
        context = zmq.asyncio.Context()
        with context.socket(zmq.DEALER) as dealer:
            dealer.connect(load.address_of("zmq", started[0]))
            for n in range(101):
                await dealer.send(envelope(f"huge-{n}", HUGE_INTEGER))
            await dealer.send(VALID)
            replies = [
                wire.read_reply(await asyncio.wait_for(dealer.recv(), 10)) for _ in range(102)
            ]
        context.term()
        assert all(
            error.startswith("not JSON this implementation can read")
            for _, _, error in replies[:-1]
        )
        assert [request_id for request_id, _, _ in replies[:-1]] == [None] * 101
        assert replies[-1] == ("valid", {"sum": 42}, None)
        counts = await stopped(started[0])
    assert (counts["refused"], counts["answered"]) == (101, 1)


@pytest.mark.parametrize("tuned", [(), ("--fast",)], ids=["zmq", "zmq-fast"])
def test_zmq_replier_survives_fuzzing(tuned: tuple[str, ...]) -> None:
    with asyncio.Runner() as runner:
        replier = runner.run(load.start_replier("zmq", None, *tuned))
        context = zmq.asyncio.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(load.address_of("zmq", replier))
        sent = 0

        async def exchange(frames: list[bytes]) -> None:
            nonlocal sent
            for frame in [*frames, VALID]:
                await dealer.send(frame)
            sent += len(frames) + 1
            replies = [await dealer.recv() for _ in range(len(frames) + 1)]  # one per frame
            assert is_the_valid_answer(replies[-1])  # each in order: none of them waits

        try:
            fuzzed(runner, ENVELOPED, exchange)
            counts = runner.run(stopped(replier))
        finally:
            dealer.close()
            context.term()
            runner.run(replier.stop())
    assert counts["answered"] + counts["refused"] == sent


# ---- the pipe: lines on the replier's stdin ---------------------------------------------


LINES = ENVELOPED.map(lambda line: line.replace(b"\n", b" ")).filter(lambda line: line.strip())


def test_pipe_replier_survives_fuzzing() -> None:
    with asyncio.Runner() as runner:
        replier = runner.run(
            asyncio.create_subprocess_exec(
                *pipe.REPLIER,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=4 * MAX_BYTES,
            )
        )
        assert replier.stdin is not None and replier.stdout is not None
        stdin, stdout = replier.stdin, replier.stdout

        async def exchange(lines: list[bytes]) -> None:
            stdin.write(b"\n".join([*lines, VALID]) + b"\n")
            await stdin.drain()
            replies = [await stdout.readline() for _ in range(len(lines) + 1)]
            assert all(reply.endswith(b"\n") for reply in replies), "the replier stopped"
            assert is_the_valid_answer(replies[-1].rstrip(b"\n"))

        try:
            fuzzed(runner, LINES, exchange)
        finally:
            stdin.close()
            assert runner.run(asyncio.wait_for(replier.wait(), 10)) == 0


# ---- AMQP: bodies with any properties, sent with aio-pika -------------------------------


async def amqp_bare_client(queue: str):
    """(connection, channel, reply queue) for requests sent by hand."""
    connection = await clients.amqp()
    channel = await connection.channel()
    replies = await channel.declare_queue(exclusive=True)
    return connection, channel, replies


async def test_amqp_replier_answers_past_its_prefetch_an_integer_too_long_for_python() -> None:
    queue = fresh_name()
    try:
        async with processes.children() as started:
            started.append(await load.start_replier("amqp", queue))  # prefetch: 100
            connection, channel, replies = await amqp_bare_client(queue)
            async with connection, replies.iterator(no_ack=True) as arriving:
                for n in range(101):
                    body = b'{"a": ' + HUGE_INTEGER + b', "b": 1}'
                    request = aio_pika.Message(
                        body, correlation_id=f"huge-{n}", reply_to=replies.name
                    )
                    await channel.default_exchange.publish(request, routing_key=queue)
                request = aio_pika.Message(SUM, correlation_id="valid", reply_to=replies.name)
                await channel.default_exchange.publish(request, routing_key=queue)
                answers = [await asyncio.wait_for(anext(arriving), 10) for _ in range(102)]
            by_id = {answer.correlation_id: answer for answer in answers}
            assert json.loads(by_id.pop("valid").body) == {"sum": 42}
            assert sorted(by_id) == sorted(f"huge-{n}" for n in range(101))
            assert all(answer.type == "error" for answer in by_id.values())
            counts = await stopped(started[0])
        assert (counts["refused"], counts["answered"]) == (101, 1)
    finally:
        await amqp.delete_queue(queue)


AMQP_REQUESTS = st.tuples(
    DATA,
    st.none() | st.text(max_size=40),  # correlation_id
    st.booleans(),  # with a reply_to
    st.none() | st.sampled_from(["error", "", "application/json"]),  # type
)


def test_amqp_replier_survives_fuzzing() -> None:
    queue = fresh_name()
    with asyncio.Runner() as runner:
        replier = runner.run(load.start_replier("amqp", queue))
        connection, channel, replies = runner.run(amqp_bare_client(queue))
        arrived: asyncio.Queue = asyncio.Queue()
        runner.run(replies.consume(arrived.put, no_ack=True))
        sent = answered = 0

        async def exchange(requests: list[tuple]) -> None:
            nonlocal sent, answered
            expected = 1
            for body, correlation_id, addressed, kind in requests:
                reply_to = replies.name if addressed else None
                message = aio_pika.Message(
                    body, correlation_id=correlation_id, reply_to=reply_to, type=kind
                )
                await channel.default_exchange.publish(message, routing_key=queue)
                expected += addressed
            valid = aio_pika.Message(SUM, correlation_id="valid", reply_to=replies.name)
            await channel.default_exchange.publish(valid, routing_key=queue)
            sent += len(requests) + 1
            got = [await arrived.get() for _ in range(expected)]
            answered += expected
            assert any(
                m.correlation_id == "valid" and json.loads(m.body) == {"sum": 42} for m in got
            )
            assert arrived.empty()

        try:
            fuzzed(runner, AMQP_REQUESTS, exchange)
            counts = runner.run(stopped(replier))
            runner.run(asyncio.sleep(0.2))  # nothing more comes
            assert arrived.empty()
        finally:
            runner.run(replier.stop())
            runner.run(connection.close())
            runner.run(amqp.delete_queue(queue))
    assert counts["answered"] + counts["refused"] == answered
    assert counts["answered"] + counts["refused"] + counts["skipped"] == sent
    assert counts["undeliverable"] == 0


# ---- Redis: entries with any fields, added with redis-py --------------------------------


async def test_redis_replier_answers_an_integer_too_long_for_python_and_goes_on() -> None:
    stream, reply_to = fresh_name(), f"replies:{uuid.uuid4().hex}"
    try:
        async with processes.children() as started, clients.redis() as redis:
            started.append(await load.start_replier("redis", stream))
            for n in range(101):
                data = b'{"a": ' + HUGE_INTEGER + b', "b": 1}'
                await redis.xadd(stream, {"id": f"huge-{n}", "reply_to": reply_to, "data": data})
            await redis.xadd(stream, {"id": "valid", "reply_to": reply_to, "data": SUM})
            replies = [wire.read_reply((await redis.blpop([reply_to], 4))[1]) for _ in range(102)]
            by_id = {request_id: (data, error) for request_id, data, error in replies}
            assert by_id.pop("valid") == ({"sum": 42}, None)
            assert sorted(by_id) == sorted(f"huge-{n}" for n in range(101))
            assert all(error.startswith("not JSON this") for _, error in by_id.values())
            counts = await stopped(started[0])
            assert (counts["refused"], counts["answered"]) == (101, 1)
            assert await redis.xlen(stream) == 0
    finally:
        await load.forget("redis", stream)
        await load.forget("redis", reply_to)


FIELD_VALUES = st.binary(max_size=16) | st.integers().map(str)
NOT_A_REPLY_LIST = FIELD_VALUES.filter(lambda value: not str(value).startswith("replies:"))


def redis_requests(reply_to: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {},
        optional={
            "id": FIELD_VALUES,
            "reply_to": st.just(reply_to) | NOT_A_REPLY_LIST,
            "data": DATA,
            "timeout_ms": FIELD_VALUES | st.sampled_from(["0", "-1", "1", "9" * 30, "1e3"]),
            "other": FIELD_VALUES,
        },
    ).filter(bool)  # an entry has a field at least


@pytest.mark.parametrize("tuned", [(), ("--fast",)], ids=["redis", "redis-fast"])
def test_redis_replier_survives_fuzzing(tuned: tuple[str, ...]) -> None:
    stream, reply_to = fresh_name(), f"replies:{uuid.uuid4().hex}"
    with asyncio.Runner() as runner:
        replier = runner.run(load.start_replier("redis", stream, *tuned))
        redis = clients.redis()
        sent = replied = 0

        async def exchange(entries: list[dict]) -> None:
            nonlocal sent, replied
            for fields in entries:
                await redis.xadd(stream, fields)
            await redis.xadd(stream, {"id": "valid", "reply_to": reply_to, "data": SUM})
            sent += len(entries) + 1
            while True:  # until the valid request's reply; the others come before or after
                reply = (await redis.blpop([reply_to], 4))[1]  # under the socket timeout
                replied += 1
                if is_the_valid_answer(reply):
                    return

        async def stop_and_drain() -> tuple[dict, int]:
            """Stop the replier, reading the replies still coming meanwhile: left in their
            list, they would expire (1 s after the last reply, for a small timeout_ms) while
            the replier stops, and go uncounted."""
            stopping, drained = asyncio.ensure_future(stopped(replier)), 0
            while not stopping.done():
                drained += await redis.blpop([reply_to], 0.05) is not None
            while await redis.lpop(reply_to) is not None:
                drained += 1
            return await stopping, drained

        try:
            fuzzed(runner, redis_requests(reply_to), exchange)
            counts, late = runner.run(stop_and_drain())
            replied += late
            assert runner.run(redis.xlen(stream)) == 0  # every entry acknowledged and deleted
        finally:
            runner.run(replier.stop())
            runner.run(load.forget("redis", stream))
            runner.run(load.forget("redis", reply_to))
            runner.run(redis.aclose())
    assert counts["answered"] + counts["refused"] == replied
    assert counts["answered"] + counts["refused"] + counts["skipped"] + counts["expired"] == sent
    assert counts["undeliverable"] == 0
