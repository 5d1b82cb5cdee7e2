"""The chat server: instances of each backend talk to each other; bad frames are refused."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from patterns import config, processes
from patterns.chat import instances
from patterns.chat.client import ChatClient
from patterns.chat.server import MAX_MESSAGE_BYTES, MISSED
from patterns.faults import Proxy

BACKENDS = ("redis", "zmq", "amqp", "streams")


@pytest.fixture
async def topic():
    name = f"test:chat:{uuid.uuid4().hex}"
    queues: list[str] = []
    yield name, queues
    await instances.clean(name, tuple(queues))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_instances_relay_each_others_messages(backend: str, topic) -> None:
    async with processes.children() as started:
        a, b = await instances.start(
            started, backend, 2, topic[0], history_url="http://127.0.0.1:9/"
        )
        async with ChatClient(a.ready["url"]) as alice, ChatClient(b.ready["url"]) as bob:
            await alice.send("hello from a")
            assert await bob.wait_for(1) == ["hello from a"]
            await bob.send("héllo from b ✓")
            assert await alice.wait_for(2) == ["hello from a", "héllo from b ✓"]
            assert await bob.wait_for(2) == ["hello from a", "héllo from b ✓"]


async def test_a_single_local_instance_relays_to_its_own_clients_only() -> None:
    async with processes.children() as started:
        a, b = await instances.start(started, "local", 2, "unused")
        async with (
            ChatClient(a.ready["url"]) as alice,
            ChatClient(a.ready["url"]) as carol,
            ChatClient(b.ready["url"]) as bob,
        ):
            await alice.send("only on a")
            assert await carol.wait_for(1) == ["only on a"]
            await bob.send("only on b")
            assert await bob.wait_for(1) == ["only on b"]
            await alice.send("again on a")
            assert await carol.wait_for(2) == ["only on a", "again on a"]
            assert bob.received == ["only on b"]  # a's messages never reached b


async def test_the_page_is_served_on_the_websocket_url() -> None:
    async with processes.children() as started:
        (a,) = await instances.start(started, "local", 1, "unused")
        async with aiohttp.ClientSession() as session, session.get(a.ready["url"]) as response:
            page = await response.text()
        assert response.status == 200 and "new WebSocket" in page
        assert f"const MAX_BYTES = {MAX_MESSAGE_BYTES}" in page


async def test_bad_frames_close_that_client_with_a_clear_code_and_nobody_else() -> None:
    async with processes.children() as started:
        (a,) = await instances.start(started, "local", 1, "unused")
        url = a.ready["url"]
        async with ChatClient(url) as bystander:
            async with ChatClient(url) as big:
                await big.send("x" * (MAX_MESSAGE_BYTES + 1))
                assert await big.wait_closed() == 1009
            async with ChatClient(url) as binary:
                await binary.ws.send_bytes(b"\x00\x01")
                assert await binary.wait_closed() == 1003
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as raw:
                await raw._writer.send_frame(b"caf\xe9", aiohttp.WSMsgType.TEXT)  # not UTF-8
                closing = await raw.receive()
                assert (closing.type, raw.close_code) == (aiohttp.WSMsgType.CLOSE, 1007)
            async with ChatClient(url) as fine:
                await fine.send("x" * MAX_MESSAGE_BYTES)  # exactly at the limit: accepted
                await fine.send("still here")
                assert await bystander.wait_for(2) == ["x" * MAX_MESSAGE_BYTES, "still here"]
            async with aiohttp.ClientSession() as session, session.get(url + "stats") as response:
                stats = await response.json()
        assert stats["closed_with"] == {"1009": 1, "1003": 1, "1007": 1, "1000": 1}


async def test_a_streams_client_that_joins_late_gets_the_history_then_live(topic) -> None:
    async with processes.children() as started:
        a, b = await instances.start(started, "streams", 2, topic[0])
        async with ChatClient(a.ready["url"]) as alice:
            for n in range(5):
                await alice.send(f"m{n}")
            await alice.wait_for(5)
            async with ChatClient(b.ready["url"]) as late:
                assert await late.wait_for(5) == [f"m{n}" for n in range(5)]
                await alice.send("m5")
                assert await late.wait_for(6) == [f"m{n}" for n in range(6)]
                await asyncio.sleep(0.2)  # anything duplicated would have arrived by now
                assert len(late.received) == 6


@contextlib.asynccontextmanager
async def redis_cut_off(
    backend: str, channel: str, *options: str
) -> AsyncIterator[tuple[Proxy, processes.Child, ChatClient, ChatClient]]:
    """Two instances of `backend` with a client each, the first reaching Redis through a
    proxy: "before" reaches both clients, then the proxy is cut. Yields the proxy, the cut
    instance, its client and the other's."""
    async with Proxy(config.REDIS_URL) as proxy, processes.children() as started:
        env = {"REDIS_URL": proxy.url}
        (cut,) = await instances.start(started, backend, 1, channel, *options, env=env)
        (direct,) = await instances.start(started, backend, 1, channel, *options)
        async with ChatClient(cut.ready["url"]) as away, ChatClient(direct.ready["url"]) as here:
            await here.send("before")
            await away.wait_for(1)
            await proxy.cut()
            yield proxy, cut, away, here


async def test_a_streams_instance_resumes_after_redis_comes_back(topic) -> None:
    async with redis_cut_off("streams", topic[0]) as (proxy, _, away, here):
        for n in range(3):
            await here.send(f"during {n}")
        await here.wait_for(4)
        await proxy.resume()
        await here.send("after")
        expected = ["before", "during 0", "during 1", "during 2", "after"]
        assert await away.wait_for(5, timeout=20) == expected


async def test_a_streams_instance_away_longer_than_the_stream_keeps_tells_its_clients(
    topic,
) -> None:
    async with redis_cut_off("streams", topic[0], "--maxlen", "100") as (proxy, cut, away, here):
        for n in range(300):  # three times what the stream keeps
            await here.send(f"during {n}")
        await here.wait_for(301)
        await proxy.resume()
        assert (await cut.next_report("trimmed", timeout=20))["stream"] == topic[0]
        await away.wait_for_text("during 299", timeout=20)
    assert away.received[:2] == ["before", MISSED]
    assert "during 0" not in away.received  # trimmed before it could be read


async def test_a_redis_instance_resubscribes_and_tells_its_clients_what_they_missed(topic) -> None:
    async with redis_cut_off("redis", topic[0]) as (proxy, cut, away, here):
        await here.send("during")
        await here.wait_for(2)
        await proxy.resume()
        assert (await cut.next_report("resubscribed", timeout=20))["channel"] == topic[0]
        await here.send("after")
        assert await away.wait_for(3, timeout=10) == ["before", MISSED, "after"]


async def test_an_amqp_instance_reconnects_and_tells_its_clients_what_they_missed(topic) -> None:
    exchange, _ = topic
    async with Proxy(config.AMQP_URL) as proxy, processes.children() as started:
        env = {"AMQP_URL": proxy.url}
        (cut,) = await instances.start(started, "amqp", 1, exchange, env=env)
        (direct,) = await instances.start(started, "amqp", 1, exchange)
        async with ChatClient(cut.ready["url"]) as away, ChatClient(direct.ready["url"]) as here:
            await here.send("before")
            await away.wait_for(1)
            await proxy.cut()
            await here.send("during")
            await here.wait_for(2)
            await proxy.resume()
            assert (await cut.next_report("reconnected", timeout=20))["queue"].endswith(
                "_srv_" + str(cut.ready["port"])
            )
            await here.send("after")
            await here.wait_for(3)  # routed to every queue: two publishers are not ordered
            await away.send("from the one that was away")
            assert await away.wait_for(4) == [
                "before",
                MISSED,
                "after",
                "from the one that was away",
            ]
            assert await here.wait_for(4) == [
                "before",
                "during",
                "after",
                "from the one that was away",
            ]


async def test_amqp_history_service_keeps_what_was_published_while_it_was_stopped(
    topic, tmp_path: Path
) -> None:
    exchange, queues = topic
    queue = f"{exchange}:history"
    queues.append(queue)
    db = tmp_path / "history.sqlite3"
    async with processes.children() as started:
        history = await instances.start_history(started, exchange, queue, db)
        url = history.ready["url"]
        (a,) = await instances.start(started, "amqp", 1, exchange, history_url=url)
        async with ChatClient(a.ready["url"]) as alice:
            await alice.send("one")
            await alice.wait_for(1)
            await history.next_report("saved", timeout=10)
            await history.stop()
            for text in ("two", "three"):
                await alice.send(text)
            await alice.wait_for(3)
        history = await instances.start_history(started, exchange, queue, db)
        stored = 0
        while stored < 2:  # "two" and "three" waited in the queue
            stored += (await history.next_report("saved", timeout=10))["outcome"] == "stored"
        url = history.ready["url"]
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert json.loads(await response.text()) == ["one", "two", "three"]
            async with session.get(url, params={"last": "2"}) as response:
                assert await response.json() == ["two", "three"]
        # a client of an instance that asks this history service gets it, then live
        (b,) = await instances.start(started, "amqp", 1, exchange, history_url=url)
        async with ChatClient(b.ready["url"]) as bob:
            assert await bob.wait_for(3) == ["one", "two", "three"]
