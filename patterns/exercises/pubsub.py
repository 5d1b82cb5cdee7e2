"""The exercises of the publish/subscribe notebooks (01-05), checked against the real brokers."""

import asyncio
import contextlib
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import zmq
import zmq.asyncio
from aio_pika.exceptions import ChannelPreconditionFailed, DeliveryError
from aiohttp import web

from patterns import clients
from patterns.chat.client import ChatClient
from patterns.exercises.checking import Wrong, exercise

WAIT_S = 5.0  # what a right answer needs is well under a second; a wrong one is stopped here


def unique(kind: str = "exercise") -> str:
    return f"{kind}:{uuid.uuid4().hex[:8]}"


async def within(awaitable: Any, seconds: float, wrong: str) -> Any:
    """The awaitable's result, or Wrong(wrong) if it takes longer than `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise Wrong(wrong) from None


async def cancelled(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# ---- 01: a chat on one instance ----------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """The answer's aiohttp application on a free loopback port; its URL."""
    if not isinstance(app, web.Application):
        raise Wrong(f"it returned {type(app).__name__}, not an aiohttp web.Application")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def gets(client: ChatClient, name: str, texts: list[str], wrong: str) -> None:
    """Wait until `client` has received exactly `texts` (no more), or say what is wrong."""
    try:
        await client.wait_for(len(texts), timeout=WAIT_S)
    except (TimeoutError, ConnectionError):
        raise Wrong(wrong) from None
    await asyncio.sleep(0.1)  # anything extra would have come by now
    if client.received != texts:
        raise Wrong(f"{name} received {client.received}, not {texts}")


@exercise("01.1")
async def relay(answer: Any) -> str:
    """Three clients; one leaves; the others chat on."""
    async with serving(answer()) as url, ChatClient(url) as alice, ChatClient(url) as bob:
        await alice.send("hello")
        await gets(bob, "bob", ["hello"], "bob never got alice's message: relay each frame")
        await gets(alice, "alice", ["hello"], "alice never got her own message back")
        await bob.send("hi")
        await gets(alice, "alice", ["hello", "hi"], "alice never got bob's answer")
        async with ChatClient(url) as carol:
            async with ChatClient(url) as leaving:
                await leaving.send("bye")
                await gets(carol, "carol", ["bye"], "carol, who joined later, got nothing")
            await alice.send("still here?")
            await gets(
                carol,
                "carol",
                ["bye", "still here?"],
                "after a client left, the others stopped getting messages: forget a client "
                "once it has gone",
            )
    return "every message reached every client, the sender too, and the chat went on when one left"


@exercise("01.2")
async def relay_with_history(answer: Any) -> str:
    """Five messages, then a client joins: the last three first, then live ones."""
    said = [f"message {n}" for n in range(1, 6)]
    async with serving(answer(3)) as url, ChatClient(url) as alice:
        for text in said:
            await alice.send(text)
        await gets(alice, "alice", said, "alice never got her own messages back")
        async with ChatClient(url) as bob:
            await gets(
                bob, "bob", said[-3:], "bob, who joined after 5 messages, did not get the last 3"
            )
            await alice.send("live")
            await gets(bob, "bob", [*said[-3:], "live"], "bob got the history, not what followed")
        async with ChatClient(url) as carol:
            await gets(carol, "carol", [*said[-2:], "live"], "the history did not keep up")
    return "a client that joined got the last 3 messages, then the live ones, each once"


# ---- 02: Redis Pub/Sub ------------------------------------------------------------------


def as_pairs(got: Any) -> list[tuple[str, bytes]]:
    """The answer's (room, text) pairs, text as bytes whichever way it was given."""
    return [
        (str(room), text if isinstance(text, bytes) else str(text).encode()) for room, text in got
    ]


async def listening(tasks: dict[str, asyncio.Task], ready: dict[str, asyncio.Event]) -> None:
    """Wait until every listener says it is subscribed (or has failed)."""
    for name, event in ready.items():
        waiting = asyncio.create_task(event.wait())
        await asyncio.wait((waiting, tasks[name]), timeout=WAIT_S, return_when="FIRST_COMPLETED")
        waiting.cancel()
        if tasks[name].done():
            tasks[name].result()  # its exception, if it raised one
        if not event.is_set():
            raise Wrong(f"{name} never set `subscribed`: set it once Redis has confirmed")


@exercise("02.1")
async def rooms(answer: Any) -> str:
    """Three people in two rooms, and a room nobody is in."""
    prefix = unique()
    people = {"alice": ["lobby"], "bob": ["lobby", "games"], "carol": ["games"]}
    said = [
        ("lobby", "hello"),
        ("games", "anyone for chess?"),
        ("news", "nobody is here"),
        ("lobby", "hi alice"),
        ("games", "me!"),
        ("lobby", "bye"),
    ]
    want = {
        name: [(room, text.encode()) for room, text in said if room in joined]
        for name, joined in people.items()
    }
    async with clients.redis() as redis:
        ready = {name: asyncio.Event() for name in people}
        tasks = {
            name: asyncio.create_task(answer(redis, prefix, joined, ready[name], len(want[name])))
            for name, joined in people.items()
        }
        try:
            await listening(tasks, ready)
            for room, text in said:
                await redis.publish(f"{prefix}:{room}", text)
            for name, task in tasks.items():
                got = as_pairs(await within(task, WAIT_S, f"{name} never returned its messages"))
                if stray := [room for room, _ in got if room not in people[name]]:
                    raise Wrong(f"{name}, in {people[name]}, got a message of room {stray[0]!r}")
                if got != want[name]:
                    raise Wrong(f"{name} got {got}, not {want[name]}")
        finally:
            await cancelled(*tasks.values())
    return "each got the messages of its rooms only, in order, labelled with their room"


@exercise("02.2")
async def moderator(answer: Any) -> str:
    """Messages to rooms of this chat (one of them new) and to channels that are not."""
    prefix = unique()
    channels = [
        f"{prefix}:lobby",
        f"{prefix}x:lobby",  # another chat whose name starts like this one's
        f"{prefix}:games",
        f"other:{prefix}:lobby",
        f"{prefix}:help",  # a room nobody had heard of before
        f"{prefix}:lobby",
    ]
    want = [
        (channel.removeprefix(f"{prefix}:"), f"said in {channel}".encode())
        for channel in channels
        if channel.startswith(f"{prefix}:")
    ]
    async with clients.redis() as redis:
        ready = asyncio.Event()
        task = asyncio.create_task(answer(redis, prefix, ready, len(want)))
        try:
            await listening({"the moderator": task}, {"the moderator": ready})
            for channel in channels:
                await redis.publish(channel, f"said in {channel}")
            got = as_pairs(await within(task, WAIT_S, "it never returned its messages"))
        finally:
            await cancelled(task)
    rooms = {room for room, _ in want}
    if any(room not in rooms for room, _ in got):
        raise Wrong(
            "it heard a channel that is not a room of this chat: subscribe to the pattern "
            "'<prefix>:*' (without the colon it matches other chats' channels too)"
        )
    if got != want:
        raise Wrong(f"it got {got}, not {want}")
    return "one pattern subscription heard every room of the chat, a new one too, and nothing else"


# ---- 03: ZeroMQ -------------------------------------------------------------------------


def xpub(context: zmq.asyncio.Context) -> tuple[zmq.asyncio.Socket, str]:
    """A bound XPUB socket that passes on every subscription, and its endpoint."""
    publisher = context.socket(zmq.XPUB)
    publisher.setsockopt(zmq.XPUB_VERBOSE, 1)
    publisher.linger = 0
    publisher.bind("tcp://127.0.0.1:0")
    return publisher, publisher.getsockopt_string(zmq.LAST_ENDPOINT)


@exercise("03.1")
async def slow_joiners(answer: Any) -> str:
    """Three subscribers, joining 0, 0.3 and 0.6 s after the answer starts."""
    messages = [f"message {n}".encode() for n in range(20)]
    context = zmq.asyncio.Context()

    async def subscriber(delay: float) -> list[bytes]:
        await asyncio.sleep(delay)
        socket = context.socket(zmq.SUB)
        socket.linger = 0
        socket.subscribe(b"chat ")
        socket.connect(endpoint)
        got: list[bytes] = []
        try:
            while len(got) < len(messages) and await socket.poll(1_000, zmq.POLLIN):
                got.append((await socket.recv()).removeprefix(b"chat "))
        finally:
            socket.close()
        return got

    try:
        publisher, endpoint = xpub(context)
        subscribers = [asyncio.create_task(subscriber(delay)) for delay in (0, 0.3, 0.6)]
        try:
            await within(
                answer(publisher, 3, messages),
                WAIT_S,
                "it was still waiting long after the third subscriber had joined: count the "
                "subscriptions (frames starting with 1) until there are as many as subscribers",
            )
            received = await asyncio.gather(*subscribers)
        finally:
            await cancelled(*subscribers)
    finally:
        context.destroy(linger=0)
    if not any(received):
        raise Wrong(
            "no subscriber got anything: publish once every subscription has arrived, each "
            "message as b'chat ' + message"
        )
    for got, who in zip(received, ("first", "second", "third"), strict=True):
        if got != messages:
            if got and set(got) <= set(messages) and got == messages[-len(got) :]:
                raise Wrong(
                    f"the {who} subscriber missed the first messages: it joined after they were "
                    "sent; wait for every subscription before publishing"
                )
            if not got:
                raise Wrong(
                    f"the {who} subscriber got nothing: it joined after the messages were sent; "
                    "wait for every subscription before publishing"
                )
            raise Wrong(f"the {who} subscriber did not get the messages as they were published")
    return "all 3 subscribers, the late ones too, got every message: no slow joiner lost any"


@exercise("03.2")
async def heartbeats(answer: Any) -> str:
    """Three messages, 1.2 s of heartbeats only, two more messages, then silence."""
    context = zmq.asyncio.Context()
    loop = asyncio.get_running_loop()
    try:
        publisher, endpoint = xpub(context)
        subscriber = context.socket(zmq.SUB)
        subscriber.linger = 0
        subscriber.subscribe(b"chat ")
        subscriber.subscribe(b"heartbeat")
        subscriber.connect(endpoint)
        for _ in range(2):  # both subscriptions have reached the publisher
            await within(publisher.recv(), WAIT_S, "the subscriber never subscribed")
        task = asyncio.create_task(answer(subscriber, 0.5))
        try:
            for text in (b"one", b"two", b"three"):
                await publisher.send(b"chat " + text)
            for _ in range(12):
                await asyncio.sleep(0.1)
                await publisher.send(b"heartbeat")
                if task.done():
                    task.result()  # what it raised, if it raised
                    raise Wrong(
                        "it returned during a quiet spell while heartbeats kept coming: only a "
                        "silence without heartbeats means the publisher has gone"
                    )
            for text in (b"four", b"five"):
                await publisher.send(b"chat " + text)
            stopped = loop.time()  # the publisher goes silent: as if it had died
            got = await within(task, WAIT_S, "it did not return once everything went silent")
            noticed_after = loop.time() - stopped
        finally:
            await cancelled(task)
    finally:
        context.destroy(linger=0)
    got = [bytes(frame) for frame in got]
    if any(frame.startswith(b"heartbeat") for frame in got):
        raise Wrong("it returned the heartbeats too: they say the publisher lives, nothing more")
    if got != [b"one", b"two", b"three", b"four", b"five"]:
        raise Wrong(f"it returned {got}, not the five chat texts without their topic")
    if noticed_after > 0.5 + 1.5:
        raise Wrong("it noticed the silence long after it began: wait `silence` seconds at most")
    return "the 5 chat texts, heartbeats left out, returned once nothing came for 0.5 s"


# ---- 04: AMQP ---------------------------------------------------------------------------


async def fanout(channel: aio_pika.abc.AbstractChannel, name: str) -> Any:
    return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=False)


@exercise("04.1")
async def bounded_backlog(answer: Any) -> str:
    """Fifty messages for a subscriber that reads none: it must keep the last ten."""
    name = unique()
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        exchange = await fanout(channel, name)
        queue = None
        try:
            queue = await answer(channel, exchange, 10)
            refused = 0
            for n in range(50):
                try:
                    await exchange.publish(aio_pika.Message(f"message {n}".encode()), "")
                except DeliveryError:
                    refused += 1
            bodies = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                bodies.append(message.body.decode())
        finally:
            if queue is not None:
                await channel.queue_delete(queue.name)
            await channel.exchange_delete(name)
    if refused:
        raise Wrong(
            "RabbitMQ refused messages once the queue was full (x-overflow reject-publish): "
            "a subscriber that catches up wants the latest ones; drop the oldest instead"
        )
    if not bodies:
        raise Wrong("nothing reached the queue: bind it to the exchange")
    if len(bodies) > 10:
        raise Wrong("the queue holds more than 10 messages: bound it (x-max-length)")
    if bodies != [f"message {n}" for n in range(40, 50)]:
        raise Wrong(f"the queue holds {bodies}, not the last 10 messages published")
    return "the queue kept the last 10 of 50 messages, in order, the oldest dropped"


READINGS = (("first", 5), (12, 5), ("first", 3))  # (x-stream-offset, how many)


async def reading(answer: Any, name: str, offset: int | str, count: int) -> list[bytes]:
    """The answer's reading, on a connection of its own: RabbitMQ closes a whole connection
    for what a stream queue does not implement (a nack, an automatic ack)."""
    async with await clients.amqp() as connection, connection.channel() as channel:
        try:
            got = await within(
                answer(channel, name, offset, count),
                WAIT_S,
                f"reading from {offset!r}, it waited for new messages: say where to start "
                "(x-stream-offset), or a stream consumer starts at the next message",
            )
        except ChannelPreconditionFailed:
            raise Wrong(
                "RabbitMQ refused the consumer: a stream consumer needs a prefetch count "
                "(channel.set_qos)"
            ) from None
        except (*clients.AMQP_LOST, ExceptionGroup) as error:
            if "stream" not in str(error) and "nack" not in str(error):
                raise
            raise Wrong(
                "RabbitMQ closed the connection: a stream queue takes no automatic acks and no "
                "nacks (leaving queue.iterator() nacks what it took ahead: take no more than "
                "you read)"
            ) from None
    return [bytes(body) for body in got]


@exercise("04.2")
async def stream_queue(answer: Any) -> str:
    """A RabbitMQ stream queue that twenty messages went through; read from three offsets."""
    name = unique()
    messages = [f"message {n}".encode() for n in range(20)]
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        exchange = await fanout(channel, name)
        arguments = {"x-queue-type": "stream"}
        stream = await channel.declare_queue(name, durable=True, arguments=arguments)
        try:
            await stream.bind(exchange)
            for message in messages:
                await exchange.publish(aio_pika.Message(message), "")
            for offset, count in READINGS:
                got = await reading(answer, name, offset, count)
                start = 0 if offset == "first" else int(offset)
                if got != messages[start : start + count]:
                    want = messages[start : start + count]
                    raise Wrong(
                        f"from offset {offset!r}, {count} messages: it got {got}, not {want}"
                    )
        finally:
            await channel.queue_delete(name)
            await channel.exchange_delete(name)
    return "read from the first message, from offset 12, then from the first again: it keeps them"


# ---- 05: Redis Streams ------------------------------------------------------------------


def stored(path: Path) -> list[tuple[str, str]]:
    """The rows of the answer's history table, in the order they were inserted."""
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [tuple(row) for row in db.execute("SELECT id, message FROM history ORDER BY rowid")]
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        db.close()


@exercise("05.1")
async def history_service(answer: Any) -> str:
    """Entries appended before it starts and while it is stopped; started three times."""
    stream = unique()
    appended: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "history.sqlite3"
        async with clients.redis() as redis:
            try:
                for run, millis in enumerate(((5, 6, 7, 8, 9), (10, 11, 12), (13,)), start=1):
                    for ms in millis:  # ids 9-1 then 10-1: in text order 10-1 comes first
                        entry_id = f"{ms}-1"
                        await redis.xadd(stream, {"message": f"said at {ms}"}, id=entry_id)
                        appended.append((entry_id, f"said at {ms}"))
                    task = asyncio.create_task(answer(redis, stream, str(path)))
                    try:
                        for _ in range(int(WAIT_S / 0.05)):
                            if len(stored(path)) >= len(appended) or task.done():
                                break
                            await asyncio.sleep(0.05)
                        await asyncio.sleep(0.3)  # time to copy something twice, if it would
                        if task.done():
                            task.result()
                            raise Wrong("it returned: it should run until it is stopped")
                    finally:
                        await cancelled(task)
                    rows = stored(path)
                    if len(rows) < len(appended):
                        if run == 1 and not rows:
                            raise Wrong(
                                "it copied nothing of what the stream held when it started: "
                                "start after 0-0 when nothing is stored yet"
                            )
                        raise Wrong(f"start {run} of 3 left entries uncopied: resume, and follow")
                    if len(rows) > len(appended):
                        raise Wrong(
                            f"after restart {run - 1} it copied entries it had stored before: "
                            "resume after the last id stored (ids compare as numbers, 10-1 "
                            "after 9-1, not as text)"
                        )
                    if rows != appended:
                        raise Wrong(f"the table holds {rows}, not {appended}")
            finally:
                await redis.delete(stream)
    return "9 entries copied once each, in order, across 3 starts, each resuming where it stopped"


@exercise("05.2")
async def keep_an_hour(answer: Any) -> str:
    """A chat with entries 2 h, 61 min, 59 min and 1 min old; one more message posted."""
    stream = unique()
    async with clients.redis() as redis:
        seconds, micros = await redis.time()  # the server's clock: ids are its milliseconds
        now_ms = seconds * 1000 + micros // 1000
        ages = {"2 hours": 7_200_000, "61 minutes": 3_660_000, "59 minutes": 3_540_000}
        ages["1 minute"] = 60_000
        try:
            for age, ms in ages.items():
                await redis.xadd(stream, {"message": f"said {age} ago"}, id=f"{now_ms - ms}-0")
            new_id = await answer(redis, stream, b"just now", 3600)
            entries = await redis.xrange(stream)
        finally:
            await redis.delete(stream)
    texts = [fields.get(b"message") for _, fields in entries]
    want = [b"said 59 minutes ago", b"said 1 minute ago", b"just now"]
    if b"said 2 hours ago" in texts or b"said 61 minutes ago" in texts:
        raise Wrong(
            "entries older than an hour are still there: trim by id with MINID, exactly (an id "
            "is the time it was added, in ms; approximate trimming keeps whole nodes)"
        )
    if texts != want:
        raise Wrong(f"the stream holds {texts}, not {want}")
    if new_id is None or (new_id.decode() if isinstance(new_id, bytes) else str(new_id)) != (
        entries[-1][0].decode()
    ):
        raise Wrong("it did not return the id of the entry it added")
    return "the entries older than an hour were trimmed, the others kept, the new one appended"
