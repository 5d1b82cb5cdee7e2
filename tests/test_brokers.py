import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from patterns import brokers, config
from patterns.brokers import BROKERS, BrokerUnavailable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_preflight_says_both_brokers_answer(capsys) -> None:
    await brokers.preflight("redis", "amqp")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"Redis     up    {config.redacted(config.REDIS_URL)}",
        f"RabbitMQ  up    {config.redacted(config.AMQP_URL)}",
    ]


@pytest.mark.parametrize(
    ("key", "url"),
    [("redis", "redis://127.0.0.1:{port}/0"), ("amqp", "amqp://guest:secret@127.0.0.1:{port}/")],
)
async def test_an_unreachable_broker_is_one_sentence(key, url, monkeypatch, capsys) -> None:
    url = url.format(port=closed_port())
    monkeypatch.setitem(BROKERS, key, dataclasses.replace(BROKERS[key], url=url))
    with pytest.raises(BrokerUnavailable) as error:
        await brokers.preflight(key)
    sentence = str(error.value)
    assert sentence == (
        f"{BROKERS[key].name} does not answer at {config.redacted(url)} (connection refused): "
        f"start it with `make brokers`, or set {BROKERS[key].url_variable} to one that runs."
    )
    assert "secret" not in sentence and "\n" not in sentence
    assert "DOWN" in capsys.readouterr().out


async def test_a_wrong_password_is_named_as_such(monkeypatch) -> None:
    url = config.AMQP_URL.replace("guest:guest", "guest:wrong")
    monkeypatch.setitem(BROKERS, "amqp", dataclasses.replace(BROKERS["amqp"], url=url))
    with pytest.raises(BrokerUnavailable, match=r"\(login refused\): set AMQP_URL with the right"):
        await brokers.probe(BROKERS["amqp"])


async def test_bring_up_never_starts_a_broker_it_was_pointed_away_from(monkeypatch) -> None:
    remote = f"redis://192.0.2.1:{closed_port()}/0"  # TEST-NET-1: not this machine
    monkeypatch.setitem(BROKERS, "redis", dataclasses.replace(BROKERS["redis"], url=remote))
    monkeypatch.setattr(brokers, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(brokers, "start_local_server", pytest.fail)
    with pytest.raises(BrokerUnavailable, match=r"192\.0\.2\.1"):
        await brokers.bring_up()


def test_the_command_line_fails_with_the_sentence_and_no_traceback() -> None:
    env = os.environ | {"REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    run = subprocess.run(
        [sys.executable, "-m", "patterns.brokers", "status"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("Redis does not answer at redis://127.0.0.1:")


def test_redacted_hides_only_the_password() -> None:
    assert config.redacted("amqp://u:p4ss@h:1/v") == "amqp://u:***@h:1/v"
    assert config.redacted("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_bring_up_starts_an_installed_redis_on_loopback(monkeypatch, capsys) -> None:
    port = closed_port()
    url = f"redis://127.0.0.1:{port}/0"
    monkeypatch.setitem(BROKERS, "redis", dataclasses.replace(BROKERS["redis"], url=url))
    monkeypatch.setattr(brokers, "docker_engine_runs", lambda: False)
    client = aioredis.from_url(url)
    try:
        await brokers.bring_up()
        assert f"starting redis-server on 127.0.0.1:{port}" in capsys.readouterr().out
        assert (await client.config_get("bind"))["bind"].startswith("127.0.0.1")
    finally:
        workdir = None
        with contextlib.suppress(redis.exceptions.ConnectionError):
            workdir = (await client.config_get("dir"))["dir"]  # its log, made for it
            await client.shutdown(nosave=True)
        await client.aclose()
        if workdir and Path(workdir).name.startswith("patterns-redis-"):
            shutil.rmtree(workdir, ignore_errors=True)
