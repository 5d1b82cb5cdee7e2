"""The chat facing hostile input and faults: floods, foreign origins, exposed hosts, absurd
queries, wrong broker URLs, and random bytes on every boundary it has."""

import asyncio
import contextlib
import itertools
import os
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patterns import clients, processes
from patterns.chat import instances
from patterns.chat.client import ChatClient
from patterns.chat.server import BYTES_PER_S, MAX_MESSAGE_BYTES, POLICY
from patterns.pubsub.sandbox import private_redis


@pytest.fixture
async def topic():
    name = f"test:chat:{uuid.uuid4().hex}"
    yield name
    await instances.clean(name)


async def stats(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "stats") as response:
        return await response.json()


async def test_a_flooding_client_is_closed_before_its_flood_swamps_the_subscription(topic) -> None:
    text = "x" * MAX_MESSAGE_BYTES
    async with processes.children() as started:
        (chat,) = await instances.start(started, "redis", 1, topic)
        url = chat.ready["url"]
        async with ChatClient(url) as bystander, ChatClient(url) as flooder:
            with contextlib.suppress(ConnectionError):
                for _ in range(10_000):  # 40 MB, as fast as the socket takes them
                    if flooder.close_code is not None:
                        break
                    await flooder.send(text)
            assert await flooder.wait_closed() == POLICY
            async with ChatClient(url) as fresh:
                await fresh.send("the chat goes on")
                await bystander.wait_for_text("the chat goes on")
        counts = await stats(url)
    assert counts["closed_with"].get(str(POLICY)) == 1
    assert counts["published"] * MAX_MESSAGE_BYTES <= 2 * BYTES_PER_S  # its budget, not 40 MB
    assert counts["notices"] == 0  # the instance's own subscription was never dropped


async def test_a_websocket_from_another_origin_is_refused_unless_allowed(topic) -> None:
    async with processes.children() as started:
        (strict,) = await instances.start(started, "local", 1, topic)
        (lenient,) = await instances.start(
            started, "local", 1, topic, "--allow-origin", "http://partner.example"
        )
        async with aiohttp.ClientSession() as session:
            for chat, origin, admitted in [
                (strict, "http://evil.example", False),
                (strict, "http://partner.example", False),
                (strict, strict.ready["url"].rstrip("/"), True),  # the page's own origin
                (strict, None, True),  # not a browser
                (lenient, "http://partner.example", True),
                (lenient, "http://evil.example", False),
            ]:
                headers = {"Origin": origin} if origin else {}
                try:
                    async with session.ws_connect(chat.ready["url"], headers=headers) as ws:
                        await ws.close()
                    status = 101
                except aiohttp.WSServerHandshakeError as error:
                    status = error.status
                assert status == (101 if admitted else 403), (origin, status)


async def test_a_server_beyond_loopback_warns_that_it_and_its_pub_socket_are_exposed() -> None:
    async with processes.children() as started:
        child = await processes.start(
            "patterns.chat",
            *("server", "--backend", "zmq", "--host", "0.0.0.0", "--http", "0"),
            f"--pub={processes.free_port()}",
            name="exposed",
        )
        started.append(child)
        assert child.ready["pub"].startswith("tcp://0.0.0.0:")
        log = child.log()
    assert "reachable from other machines and so does its ZeroMQ PUB socket" in log


async def test_the_history_service_answers_400_to_a_last_beyond_any_integer(tmp_path) -> None:
    exchange = f"test:chat:{uuid.uuid4().hex}"
    queue = f"{exchange}:history"
    try:
        async with processes.children() as started:
            history = await instances.start_history(
                started, exchange, queue, tmp_path / "history.sqlite3"
            )
            url = history.ready["url"]
            async with aiohttp.ClientSession() as session:
                for last in ("99999999999999999999999", "0", "-1", "two"):
                    async with session.get(url, params={"last": last}) as response:
                        assert response.status == 400, last
                async with session.get(url, params={"last": "5"}) as response:
                    assert response.status == 200 and await response.json() == []
    finally:
        await instances.clean(exchange, (queue,))


async def chat_process(*args: str, **env: str) -> tuple[int, str]:
    """Run `python -m patterns.chat ARGS` to its end: its exit code and its stderr."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "patterns.chat", *args),
        env=os.environ | env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    return process.returncode or 0, stderr.decode()


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (("server", "--backend", "redis"), {"REDIS_URL": "redis//nowhere"}, 2, "not a valid URL"),
        (("server", "--backend", "redis"), {"REDIS_URL": "PRIVATE"}, 2, "refused the login"),
        (
            ("server", "--backend", "streams", "--give-up-after", "1"),
            {"REDIS_URL": f"redis://127.0.0.1:{processes.free_port()}/0"},
            3,
            "unreachable",
        ),
        (("history",), {"AMQP_URL": "amqp://guest:wrong@127.0.0.1:5672/"}, 2, "refused the login"),
        (("server", "--backend", "amqp"), {"AMQP_URL": "amqp:/x"}, 2, "not a valid URL"),
        (
            ("history", "--give-up-after", "1"),
            {"AMQP_URL": f"amqp://guest:guest@127.0.0.1:{processes.free_port()}/"},
            3,
            "unreachable",
        ),
        (("server", "--backend", "kafka"), {}, 2, "invalid choice: 'kafka'"),
    ],
)
async def test_a_wrong_broker_url_is_one_sentence_and_an_exit_code(args, env, code, says) -> None:
    port = ("--http" if args[0] == "server" else "--port", "0")
    if env.get("REDIS_URL") == "PRIVATE":  # a Redis that has a password, given a wrong one
        async with private_redis("requirepass", "secret") as url:
            wrong = url.replace("redis://", "redis://:wrong@")
            returncode, stderr = await chat_process(*args, *port, REDIS_URL=wrong)
    else:
        returncode, stderr = await chat_process(*args, *port, **env)
    problem = [line for line in stderr.splitlines() if " WARNING " not in line]
    assert returncode == code, stderr
    assert len(problem) == 1 and says in problem[0], stderr
    assert "Traceback" not in stderr


payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=MAX_MESSAGE_BYTES + 1, max_size=MAX_MESSAGE_BYTES + 64),
    st.text(max_size=64).map(lambda text: text.encode("utf-16")),  # not UTF-8, mostly
    st.just(b"caf\xe9"),
)


@pytest.fixture
async def fuzzed(topic):
    """One Redis instance for every example, and a client that hears what it relays."""
    async with processes.children() as started, clients.redis() as redis:
        (chat,) = await instances.start(started, "redis", 1, topic)
        async with ChatClient(chat.ready["url"]) as listener:
            yield chat.ready["url"], topic, redis, listener


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.lists(payloads, min_size=1, max_size=5))
async def test_random_bytes_on_every_boundary_leave_the_chat_relaying(fuzzed, junk) -> None:
    url, channel, redis, listener = fuzzed
    before = await stats(url)
    for payload in junk:  # straight onto the backend's channel, as any Redis client could
        await redis.publish(channel, payload)
    async with aiohttp.ClientSession() as session:
        for payload, kind in itertools.product(
            junk, (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        ):
            async with session.ws_connect(url) as ws:  # a connection each: bad frames close it
                await ws._writer.send_frame(payload, kind)
                await ws.close()
    marker = f"still relaying {uuid.uuid4().hex}"
    async with ChatClient(url) as sender:
        await sender.send(marker)
        await listener.wait_for_text(marker)
    after = await stats(url)
    invalid = [p for p in junk if len(p) > MAX_MESSAGE_BYTES or not is_utf8(p)]
    assert after["malformed"] - before["malformed"] == len(invalid)


def is_utf8(payload: bytes) -> bool:
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True
