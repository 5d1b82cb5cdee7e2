"""Request/reply: the same guarantees over every transport, against real processes and brokers."""

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time

import pytest
import zmq
import zmq.asyncio

from patterns.messages import MalformedMessage
from patterns.reqrep import (
    FAST,
    TRANSPORTS,
    ChannelClosed,
    Overloaded,
    ReplyError,
    RequestTimeout,
    connect,
    handler,
    pipe,
    wire,
    zeromq,
)
from patterns.reqrep.pacing import timer_paced
from tests.conftest import bench
from tests.reqrep_support import eventually, serving, start_replier

# ---- the wire format and the handler ----------------------------------------------------


def test_requests_and_replies_are_the_books_json() -> None:
    assert json.loads(wire.request("r1", {"a": 1})) == {
        "type": "request",
        "data": {"a": 1},
        "id": "r1",
    }
    assert wire.read_reply(wire.response("r1", {"sum": 3})) == ("r1", {"sum": 3}, None)
    assert wire.read_reply(wire.error("r1", "no")) == ("r1", None, "no")
    assert wire.read_request(wire.request("r1", [1, 2])) == ("r1", [1, 2])


@pytest.mark.parametrize(
    ("raw", "problem", "request_id"),
    [
        (b"{not json", "not JSON", None),
        (b"\xff\xfe", "not JSON", None),
        (b"[1, 2]", "a request is a JSON object, not list", None),
        (b'{"type": "request", "data": 1}', "id must be a non-empty string", None),
        (b'{"type": "response", "id": "r7"}', "type is 'response', not 'request'", "r7"),
        (b'{"id": "r8", "data": NaN}', "not JSON: NaN is not a JSON value", None),
        (b'{"id": "r9", "data": ' + b"9" * 5_000 + b"}", "Exceeds the limit", None),
        (b"[" * 100_000, "nested too deep", None),
    ],
)
def test_an_unreadable_request_says_why_and_keeps_its_id(raw, problem, request_id) -> None:
    with pytest.raises(wire.BadRequest, match=problem) as error:
        wire.read_request(raw)
    assert error.value.request_id == request_id


def test_an_unreadable_reply_is_malformed() -> None:
    for raw in (b"nope", b"3", b'{"type": "request", "id": "x"}'):
        with pytest.raises(MalformedMessage):
            wire.read_reply(raw)


def test_lines_are_split_across_chunks_and_an_endless_line_is_cut() -> None:
    lines = wire.Lines(limit=10)
    assert lines.feed(b'{"a"') == []
    assert lines.feed(b':1}\n{"b":2}\n\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert lines.feed(b"x" * 20) == [b'{"c"' + b"x" * 20]  # over the limit: out, to be refused
    assert lines.feed(b"still the same line") == []  # and the rest of it is skipped
    assert lines.feed(b'tail\n{"d":4}\n') == [b'{"d":4}']


async def test_the_books_sum_answers_now_or_after_its_delay() -> None:
    assert handler.add({"a": 1, "b": 2}) == {"sum": 3}
    started = time.perf_counter()
    assert await handler.add({"a": 1, "b": 2, "delay": 50}) == {"sum": 3}
    assert time.perf_counter() - started >= 0.045
    for bad, problem in [
        ([1, 2], "an object with a and b"),
        ({"a": 1}, "b must be a number, not None"),
        ({"a": True, "b": 1}, "a must be a number, not True"),
        ({"a": 1, "b": 1, "delay": -5}, "delay must be 0 to 60000 ms"),
    ]:
        with pytest.raises(wire.BadRequest, match=problem):
            handler.add(bad)


async def test_a_failing_handler_becomes_an_error_reply() -> None:
    def broken(data: object) -> object:
        return 1 / 0

    assert handler.answer(broken, {}) == (
        None,
        "the handler failed: ZeroDivisionError: division by zero",
    )
    counts = handler.ReplierCounts()
    reply = handler.respond(lambda data: {1, 2}, wire.request("r1", None), counts)
    assert wire.read_reply(reply)[2].startswith("the reply is not JSON")
    assert (counts.answered, counts.refused) == (0, 1)


# ---- the same guarantees over every transport -------------------------------------------

# each transport, and the tuned variants of those that have one
VARIANTS = pytest.mark.parametrize(
    ("transport", "fast"),
    [(transport, False) for transport in TRANSPORTS] + [(transport, True) for transport in FAST],
    ids=[*TRANSPORTS, *(f"{transport}-fast" for transport in FAST)],
)


def tuned(fast: bool) -> tuple[str, ...]:
    return ("--fast",) if fast else ()


@VARIANTS
async def test_replies_are_matched_in_whatever_order_they_come(transport: str, fast: bool) -> None:
    async with (
        serving(transport, *tuned(fast)) as (address, _),
        connect(transport, address, fast=fast) as connected,
    ):
        order: list[int] = []

        async def ask(a: int, delay: int) -> dict:
            reply = await connected.request({"a": a, "b": 100, "delay": delay})
            order.append(a)
            return reply

        replies = await asyncio.gather(ask(1, 600), ask(2, 0), ask(3, 300))
        assert replies == [{"sum": 101}, {"sum": 102}, {"sum": 103}]
        assert order == [2, 3, 1]  # the quickest answer first, each to its own request
        assert connected.stats() | {"sent": 3} == {
            "sent": 3,
            "answered": 3,
            "refused": 0,
            "timed_out": 0,
            "failed": 0,
            "overloaded": 0,
            "late": 0,
            "unknown": 0,
            "malformed": 0,
            "pending": 0,
        }


@VARIANTS
async def test_many_requests_in_flight_all_matched(transport: str, fast: bool) -> None:
    async with (
        serving(transport, *prefetch(transport), *tuned(fast)) as (address, _),
        connect(transport, address, fast=fast) as connected,
    ):
        delays = [random.randrange(0, 100) for _ in range(1_000)]
        replies = await asyncio.gather(
            *(connected.request({"a": n, "b": 1, "delay": d}) for n, d in enumerate(delays))
        )
        assert replies == [{"sum": n + 1} for n in range(1_000)]
        assert len(connected) == 0 and connected.counts.answered == 1_000


def prefetch(transport: str) -> tuple[str, ...]:
    return ("--prefetch", "1000") if transport in ("amqp", "amqp-direct", "redis") else ()


@VARIANTS
async def test_a_timeout_names_the_request_and_its_late_reply_is_only_counted(
    transport: str, fast: bool
) -> None:
    async with (
        serving(transport, *tuned(fast)) as (address, _),
        connect(transport, address, fast=fast) as connected,
    ):
        with pytest.raises(RequestTimeout) as timed_out:
            await connected.request({"a": 1, "b": 2, "delay": 400}, timeout=0.1)
        error = timed_out.value
        assert isinstance(error, TimeoutError)
        assert str(error) == f"no reply to request {error.request_id} within 0.1 s"
        assert len(connected) == 0  # its entry left the map with the call
        await eventually(lambda: connected.counts.late == 1)  # the reply came, and was dropped
        assert await connected.request({"a": 2, "b": 2}) == {"sum": 4}
        assert (connected.counts.timed_out, connected.counts.unknown) == (1, 0)


@VARIANTS
async def test_a_bad_request_gets_an_error_reply_and_the_replier_goes_on(
    transport: str, fast: bool
) -> None:
    async with (
        serving(transport, *tuned(fast)) as (address, _),
        connect(transport, address, fast=fast) as connected,
    ):
        with pytest.raises(ReplyError, match="a must be a number, not 'one'"):
            await connected.request({"a": "one", "b": 2})
        assert await connected.request({"a": 1, "b": 2}) == {"sum": 3}
        assert connected.counts.refused == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_closed_requester_fails_at_once(transport: str) -> None:
    async with serving(transport) as (address, _):
        async with connect(transport, address) as connected:
            pending = asyncio.create_task(connected.request({"a": 1, "b": 2, "delay": 1_000}))
            await eventually(lambda: len(connected) == 1)
        with pytest.raises(ChannelClosed, match="the requester was closed"):
            await pending
        with pytest.raises(ChannelClosed, match="the requester was closed"):
            await asyncio.wait_for(connected.request({"a": 1, "b": 2}), 1)


@pytest.mark.parametrize(
    ("transport", "fast"),
    [("zmq", False), ("amqp", False), ("redis", False), ("zmq", True), ("redis", True)],
    ids=["zmq", "amqp", "redis", "zmq-fast", "redis-fast"],
)
async def test_a_replier_told_to_stop_first_answers_the_requests_in_hand(
    transport: str, fast: bool
) -> None:
    async with (
        serving(transport, *tuned(fast)) as (address, started),
        connect(transport, address, fast=fast) as asker,
    ):
        pending = [
            asyncio.create_task(asker.request({"a": n, "b": 0, "delay": 500})) for n in range(10)
        ]
        await eventually(lambda: asker.counts.sent == 10)
        # requests are taken in order: once a quick one sent after them is answered, the
        # replier holds all ten
        assert await asker.request({"a": 0, "b": 0}) == {"sum": 0}
        await started[0].stop()
        assert await asyncio.gather(*pending) == [{"sum": n} for n in range(10)]


async def test_past_max_pending_a_request_is_refused_at_once() -> None:
    async with serving("zmq") as (endpoint, _), zeromq.requester(endpoint) as connected:
        connected.max_pending = 5
        waiting = [
            asyncio.create_task(connected.request({"a": n, "b": 0, "delay": 300})) for n in range(5)
        ]
        await eventually(lambda: len(connected) == 5)
        with pytest.raises(Overloaded, match="refused: 5 are pending"):
            await connected.request({"a": 9, "b": 9})
        assert await asyncio.gather(*waiting) == [{"sum": n} for n in range(5)]
        assert await connected.request({"a": 9, "b": 9}) == {"sum": 18}  # room again
        assert connected.counts.overloaded == 1


# ---- the pipe ---------------------------------------------------------------------------


async def test_when_the_pipe_replier_dies_every_pending_request_fails_at_once() -> None:
    async with pipe.requester(timeout=30) as connected:
        assert await connected.request({"a": 1, "b": 1}) == {"sum": 2}
        pending = [
            asyncio.create_task(connected.request({"a": n, "b": 1, "delay": 20_000}))
            for n in range(50)
        ]
        await eventually(lambda: len(connected) == 50)
        connected.kill()
        started = time.perf_counter()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert time.perf_counter() - started < 2  # not the 30 s timeout
        reason = f"the replier (pid={connected.pid}) exited with code -9"
        assert all(isinstance(r, ChannelClosed) and r.reason == reason for r in results)
        with pytest.raises(ChannelClosed, match="exited with code -9"):
            await asyncio.wait_for(connected.request({"a": 1, "b": 1}), 1)
        assert connected.counts.failed == 51


async def test_a_replier_that_does_not_read_cannot_block_a_request_past_its_timeout() -> None:
    never_reads = [sys.executable, "-c", "import time; time.sleep(60)"]
    async with pipe.requester(never_reads, timeout=0.5) as connected:
        big = {"a": 1, "b": 2, "padding": "x" * 4_000}
        started = time.perf_counter()
        results = await asyncio.gather(
            *(connected.request(big) for _ in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, RequestTimeout) for r in results)
        assert time.perf_counter() - started < 3
        assert len(connected) == 0


def test_the_pipe_replier_answers_a_broken_line_with_an_error_and_goes_on() -> None:
    run = subprocess.run(
        list(pipe.REPLIER),
        input=b'not json\n{"type": "request", "data": {"a": 1, "b": 2}, "id": "r2"}\n',
        capture_output=True,
        timeout=30,
    )
    first, second = (json.loads(line) for line in run.stdout.splitlines())
    assert first["type"] == "error" and first["inReplyTo"] is None
    assert first["error"].startswith("not JSON")
    assert second == {"type": "response", "data": {"sum": 3}, "inReplyTo": "r2"}
    assert run.returncode == 0  # stdin ended: it stops


def test_the_books_requester_prints_replies_as_they_come() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "patterns.reqrep", "requester", "--transport", "pipe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.splitlines() == ["Reply: 6 + 1 = 7", "Reply: 1 + 2 = 3"], run.stderr


# ---- ZeroMQ -----------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["zmq", "zmq-fast"])
async def test_when_the_zmq_replier_dies_pending_requests_fail_at_once_and_a_new_one_answers(
    fast: bool,
) -> None:
    async with (
        serving("zmq", *tuned(fast)) as (endpoint, started),
        connect("zmq", endpoint, timeout=30, fast=fast) as connected,
    ):
        assert await connected.request({"a": 1, "b": 1}) == {"sum": 2}
        pending = [
            asyncio.create_task(connected.request({"a": n, "b": 1, "delay": 20_000}))
            for n in range(50)
        ]
        await eventually(lambda: len(connected) == 50)
        started[0].kill()
        begun = time.perf_counter()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert time.perf_counter() - begun < 2
        assert all(
            isinstance(r, ChannelClosed) and r.reason == f"the replier at {endpoint} disconnected"
            for r in results
        )
        with pytest.raises(RequestTimeout):  # nobody there: it waits, but not for ever
            await connected.request({"a": 1, "b": 1}, timeout=0.3)
        started.append(await start_replier("zmq", endpoint, *tuned(fast)))  # it reconnects
        assert await connected.request({"a": 2, "b": 2}) == {"sum": 4}


async def test_a_zmq_requester_with_two_repliers_goes_on_with_one_when_the_other_dies() -> None:
    async with (
        serving("zmq") as (first, started),
        serving("zmq") as (second, _),
        connect("zmq", f"{first},{second}", timeout=5) as connected,
    ):
        assert await asyncio.gather(*(connected.request({"a": n, "b": 0}) for n in range(20))) == [
            {"sum": n} for n in range(20)
        ]
        started[0].kill()
        await asyncio.sleep(0.5)  # its disconnection seen
        # none dealt to the dead one's endpoint while ZeroMQ tries to reconnect to it
        assert await asyncio.gather(*(connected.request({"a": n, "b": 1}) for n in range(20))) == [
            {"sum": n + 1} for n in range(20)
        ]


async def test_zmq_replier_answers_a_broken_frame_with_an_error_and_goes_on() -> None:
    async with serving("zmq") as (endpoint, _):
        context = zmq.asyncio.Context()
        with context.socket(zmq.DEALER) as dealer:
            dealer.connect(endpoint)
            await dealer.send(b"\x00 not json")
            error = json.loads(await asyncio.wait_for(dealer.recv(), 10))
            assert error["type"] == "error" and error["inReplyTo"] is None
            await dealer.send(wire.request("r2", {"a": 1, "b": 2}))
            assert wire.read_reply(await asyncio.wait_for(dealer.recv(), 10)) == (
                "r2",
                {"sum": 3},
                None,
            )
        context.term()


async def test_unknown_and_unreadable_replies_are_counted_never_raised() -> None:
    context = zmq.asyncio.Context()
    with context.socket(zmq.ROUTER) as router:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        async with zeromq.requester(f"tcp://127.0.0.1:{port}") as connected:
            asking = asyncio.create_task(connected.request({"a": 1, "b": 2}))
            identity, frame = await asyncio.wait_for(router.recv_multipart(), 10)
            request_id, _ = wire.read_request(frame)
            await router.send_multipart([identity, wire.response("nobody-asked", 1)])
            await router.send_multipart([identity, b"garbage"])
            await router.send_multipart([identity, wire.response(request_id, {"sum": 3})])
            await router.send_multipart([identity, wire.response(request_id, {"sum": 3})])
            assert await asking == {"sum": 3}
            await eventually(lambda: connected.counts.late == 1)  # the duplicate
            assert (connected.counts.unknown, connected.counts.malformed) == (1, 1)
    context.term()


# ---- the load generator -----------------------------------------------------------------


async def test_the_kernel_timer_keeps_the_schedule() -> None:
    rate, count = 2_000, 400
    stamps = [stamp async for batch in timer_paced(rate, count) for stamp in batch]
    assert len(stamps) == count
    assert {b - a for a, b in itertools.pairwise(stamps)} == {500_000}
    assert time.perf_counter_ns() >= stamps[-1]  # none handed out before it was due


async def test_an_open_loop_run_reports_steps_and_leaves_nothing_pending() -> None:
    from patterns.reqrep import load

    result = await load.run("zmq", [200, 500], seconds=0.5)
    assert [step["offered"] for step in result["steps"]] == [200, 500]
    assert [step["answered"] for step in result["steps"]] == [100, 250]
    assert all(step["p50_ms"] > 0 and "requester" in step["cores"] for step in result["steps"])
    assert result["requester"]["pending"] == 0


# ---- the benchmark ----------------------------------------------------------------------


def test_the_benchmark_reports_every_transport_against_the_raw_client() -> None:
    # the numbers are checked by running the benchmark, not here: a timed test is flaky
    run = bench("reqrep", "--json", "--quick")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result["transports"]) == set(TRANSPORTS)
    for transport, numbers in result["transports"].items():
        sides = {"idiomatic", "fast", "raw"} if transport in FAST else {"idiomatic", "raw"}
        assert sides <= set(numbers)
        rps = f"rps_{result['in_flight']}"
        assert all(numbers[side]["p50_ms"] > 0 and numbers[side][rps] > 0 for side in sides)
        best = numbers[numbers["ratio_of"]]["p50_ms"]
        assert numbers["ratio"] == round(numbers["raw"]["p50_ms"] / best, 3)
        assert ("fast_speedup" in numbers) == (transport in FAST)
    assert isinstance(result["meets_target"], bool)
