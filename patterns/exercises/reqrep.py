"""The exercises of the request/reply notebooks (09-10), checked against real sockets and brokers.

09 runs the answer against a ROUTER of the checker's own, on a free port of 127.0.0.1, that
answers as the checker likes (late, never, to nobody); 10 against RabbitMQ and Redis, on a
queue or key prefix of its own, deleted at the end.
"""

import asyncio
import contextlib
import json
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import zmq
import zmq.asyncio

from patterns import clients
from patterns.exercises.checking import Wrong, exercise
from patterns.reqrep import wire

ANSWER_LIMIT_S = 10.0  # no single call of an answer takes longer than this


async def within(call: Any, what: str, limit: float = ANSWER_LIMIT_S) -> Any:
    """Await an answer's call, or say it never returned; `TimeoutError` (the class) if the
    call raised one, since `check` would take that for its own time running out."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        raise Wrong(f"{what} did not return within {limit:g} s")
    try:
        return task.result()
    except TimeoutError:
        return TimeoutError


# ---- 09: the correlation identifier over DEALER/ROUTER --------------------------------------


@contextlib.asynccontextmanager
async def router_and_dealer() -> AsyncIterator[tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]]:
    """A ROUTER on a free loopback port and a DEALER connected to it; both closed after."""
    context = zmq.asyncio.Context()
    try:
        router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
        router.linger = dealer.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield router, dealer
    finally:
        context.destroy(linger=0)


@exercise("09.1")
async def retry_budget(answer: Any) -> str:
    """A replier that drops the first attempts of each request id; one that never answers."""
    timeout = 0.3
    async with router_and_dealer() as (router, dealer):
        attempts: dict[str, int] = defaultdict(int)
        drop = {"first": 2}  # how many attempts of each id go unanswered

        async def replier() -> None:
            while True:
                identity, frame = await router.recv_multipart()
                request_id, data = wire.read_request(frame)
                attempts[request_id] += 1
                if attempts[request_id] <= drop["first"]:
                    continue  # lost, as if the replier had restarted
                # a stray reply first (to a call that gave up long ago), then the real one
                stray = wire.response("someone-else", {"sum": -1})
                reply = wire.response(request_id, {"sum": data["a"] + data["b"]})
                await router.send_multipart([identity, stray])
                await router.send_multipart([identity, reply])

        serving = asyncio.create_task(replier())
        try:
            got = await within(answer(dealer, {"a": 1, "b": 2}, timeout, 3), "ask(..., retries=3)")
            first = dict(attempts)
            drop["first"] = 1_000  # from now on, nothing is answered
            attempts.clear()
            gave = await within(answer(dealer, {"a": 5, "b": 5}, timeout, 1), "ask(retries=1)")
            second = dict(attempts)
        finally:
            serving.cancel()
    if len(first) > 1:
        raise Wrong(f"its attempts carried {len(first)} ids: a retry keeps the request's id")
    if got is TimeoutError:
        raise Wrong("it raised TimeoutError with retries=3, though the third attempt is answered")
    if got != {"sum": 3}:
        raise Wrong(f"it returned {got!r}, not the reply to its request ({{'sum': 3}})")
    if list(first.values()) != [3]:
        raise Wrong(f"it sent {sum(first.values())} attempts; the third one was answered")
    if gave is not TimeoutError:
        raise Wrong(f"with no reply ever, it returned {gave!r}: it should raise TimeoutError")
    if sum(second.values()) != 2:
        raise Wrong(f"with retries=1 it sent {sum(second.values())} attempts, not 2")
    if set(second) & set(first):
        raise Wrong("two different requests went out under the same id")
    return (
        "answered on the third attempt under one id; with retries=1 it gave up after 2 "
        "attempts with TimeoutError; a reply to another id was ignored"
    )


@exercise("09.2")
async def correlation_map(answer: Any) -> str:
    """Twenty requests answered out of order, with stray, garbage, duplicate and late replies,
    one request timing out and one cancelled; the map must end empty."""
    async with router_and_dealer() as (router, dealer):
        correlator = answer(dealer)
        raised: list[BaseException] = []

        async def reader() -> None:
            while True:
                frame = await dealer.recv()
                try:
                    correlator.on_reply(frame)
                except Exception as error:
                    raised.append(error)

        async def replier() -> None:
            identity, held = None, []
            while True:
                identity, frame = await router.recv_multipart()
                request_id, data = wire.read_request(frame)
                if data.get("late"):
                    asyncio.get_running_loop().call_later(
                        0.5, router.send_multipart, [identity, answered(request_id, data)]
                    )
                elif data.get("never"):
                    continue
                else:
                    held.append((request_id, data))
                if len(held) == 20:  # all in: answer them last first, with noise between
                    await router.send_multipart([identity, wire.response("nobody", {"sum": 0})])
                    await router.send_multipart([identity, b"not json at all"])
                    for request_id, data in reversed(held):
                        await router.send_multipart([identity, answered(request_id, data)])
                    await router.send_multipart([identity, answered(*held[0])])  # twice
                    held.clear()

        def answered(request_id: str, data: dict) -> bytes:
            return wire.response(request_id, {"sum": data["a"] + data["b"]})

        tasks = [asyncio.create_task(reader()), asyncio.create_task(replier())]
        forgotten = asyncio.create_task(correlator.request({"a": 0, "b": 0, "never": 1}, 30))
        late = asyncio.create_task(correlator.request({"a": 0, "b": 0, "late": 1}, 0.2))
        try:
            replies = await within(
                asyncio.gather(*(correlator.request({"a": n, "b": 1}, 5) for n in range(20))),
                "twenty requests",
            )
            late_got = await within(late, "the request that times out")
            forgotten.cancel()  # its caller gives up
            with contextlib.suppress(asyncio.CancelledError):
                await forgotten
            await asyncio.sleep(0.6)  # the late reply arrives meanwhile
            left = dict(correlator.waiting)
        finally:
            for task in [*tasks, forgotten, late]:
                task.cancel()
            await asyncio.gather(*tasks, forgotten, late, return_exceptions=True)
    if replies is TimeoutError:
        raise Wrong("one of twenty requests raised TimeoutError: its reply never reached it")
    if replies != [{"sum": n + 1} for n in range(20)]:
        wrong = next(n for n, reply in enumerate(replies) if reply != {"sum": n + 1})
        raise Wrong(f"request {wrong} got {replies[wrong]!r}, not its own reply")
    if raised:
        raise Wrong(f"on_reply raised {type(raised[0]).__name__} ({raised[0]}): drop such replies")
    if late_got is not TimeoutError:
        raise Wrong(f"a request answered after its timeout returned {late_got!r}, not TimeoutError")
    if left:
        raise Wrong(f"{len(left)} entries were left in waiting: remove each one in a finally")
    return (
        "20 replies out of order each to its caller; stray, garbage, duplicate and late "
        "replies dropped; a timeout and a cancellation left the map empty"
    )


# ---- 10: the return address over RabbitMQ and Redis -----------------------------------------


@exercise("10.1")
async def direct_reply_to(answer: Any) -> str:
    """Requests to a queue of the checker's own, answered out of order by a replier that
    records what each request said about its reply."""
    queue_name = f"exercise:{uuid.uuid4().hex[:8]}"
    requests = [{"a": n, "b": 10} for n in range(10)]
    seen: list[tuple[str | None, str | None]] = []  # (reply_to, correlation_id) per request
    async with await clients.amqp() as connection:
        serving_channel = await connection.channel()
        queue = await serving_channel.declare_queue(queue_name, auto_delete=False)

        async def replier() -> None:
            async with queue.iterator(no_ack=True) as deliveries:
                async for message in deliveries:
                    seen.append((message.reply_to, message.correlation_id))
                    answering.add(asyncio.create_task(answer_later(message)))

        async def answer_later(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            data = json.loads(message.body)
            await asyncio.sleep(0.4 - 0.03 * data["a"])  # the last sent is answered first
            exchange = serving_channel.default_exchange
            if message.reply_to is None:
                return
            if data["a"] == 0:  # a reply nobody asked for, before the real one
                stray = aio_pika.Message(b'{"sum": -1}', correlation_id="nobody")
                await exchange.publish(stray, routing_key=message.reply_to)
            reply = aio_pika.Message(
                json.dumps({"sum": data["a"] + data["b"]}).encode(),
                correlation_id=message.correlation_id,
            )
            await exchange.publish(reply, routing_key=message.reply_to)

        serving, answering = asyncio.create_task(replier()), set()
        try:
            channel = await connection.channel()
            got = await within(answer(channel, queue_name, requests), "ask_all")
        finally:
            for task in [serving, *answering]:
                task.cancel()
            await asyncio.gather(serving, *answering, return_exceptions=True)
            await serving_channel.queue_delete(queue_name)
    reply_to = {r for r, _ in seen}
    if not all(r and r.startswith("amq.rabbitmq.reply-to") for r in reply_to):
        raise Wrong(
            f"the requests named {sorted(map(str, reply_to))} as reply_to, not direct reply-to"
        )
    ids = [c for _, c in seen]
    if None in ids or len(set(ids)) != len(requests):
        raise Wrong(f"{len(requests)} requests carried {len(set(ids) - {None})} correlation ids")
    expected = [{"sum": n + 10} for n in range(10)]
    if got is TimeoutError:
        raise Wrong("it raised TimeoutError: replies came back, but not to the waiting callers")
    if got != expected:
        raise Wrong(f"it returned {got!r}; each request's own reply, in order, was {expected!r}")
    return "10 requests over direct reply-to, replies out of order matched by correlation_id"


@exercise("10.2")
async def idempotent_replier(answer: Any) -> str:
    """Ten requests, three of them delivered twice (as after a replier's crash before its
    ack): each is computed once, and a redelivery gets the first answer back."""
    cache = f"exercise:{uuid.uuid4().hex[:8]}"
    ttl_s = 30
    computed: dict[str, int] = defaultdict(int)

    async def handle(data: dict) -> dict:  # the costly work, with a mark of which run it was
        await asyncio.sleep(0.01)
        computed[json.dumps(data, sort_keys=True)] += 1
        return {"sum": data["a"] + data["b"], "run": random.randrange(1 << 30)}

    deliveries = [(f"r{n}", {"a": n, "b": 1}) for n in range(10)]
    deliveries += [deliveries[n] for n in (2, 5, 7)]  # redelivered
    replies: dict[str, list] = defaultdict(list)
    async with clients.redis() as redis:
        try:
            for request_id, data in deliveries:
                reply = await within(
                    answer(redis, cache, request_id, data, handle, ttl_s), "answer_once"
                )
                replies[request_id].append(reply)
            keys = [key async for key in redis.scan_iter(match=f"{cache}*")]
            ttls = [await redis.pttl(key) for key in keys]
        finally:
            if stored := [key async for key in redis.scan_iter(match=f"{cache}*")]:
                await redis.delete(*stored)
    if any(not isinstance(got[0], dict) for got in replies.values()):
        raise Wrong(f"it returned {replies['r0'][0]!r}: return the handler's reply (a dict)")
    if any(reply[0].get("sum") != int(rid[1:]) + 1 for rid, reply in replies.items()):
        raise Wrong("a reply does not hold the handler's answer to its own request")
    if (twice := sum(count > 1 for count in computed.values())) > 0:
        raise Wrong(f"{twice} redelivered requests were computed again: answer from the cache")
    if any(len(set(map(json.dumps, got))) > 1 for got in replies.values()):
        raise Wrong("a redelivered request got a different reply than the first delivery")
    if not keys:
        raise Wrong(f"nothing was stored under keys starting with {cache!r}")
    if any(not 0 < ttl <= ttl_s * 1_000 for ttl in ttls):
        raise Wrong(f"a key of the cache has no expiry within {ttl_s} s: it would stay for ever")
    return "10 requests computed once each out of 13 deliveries; the cache expires"
