"""Is each broker there? If not, one sentence that says where we looked and how to start it.

Every notebook's first code cell calls `await preflight(...)`. The test command and
`make lab` call `python -m patterns.brokers up`, which uses brokers that already answer,
else starts them (Docker Compose if an engine runs, else the locally installed servers).
"""

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from errno import ECONNREFUSED
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import redis.asyncio as aioredis
from aio_pika.exceptions import ProbableAuthenticationError
from redis.exceptions import AuthenticationError

from patterns import cli, config

PROBE_TIMEOUT_S = 2.0
START_TIMEOUT_S = 90.0
ROOT = Path(__file__).resolve().parent.parent


class BrokerUnavailable(RuntimeError):
    """A broker does not answer; the message says which URL and how to start it."""


async def redis_version(url: str, timeout: float) -> str:
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return str(info["redis_version"])


async def rabbitmq_version(url: str, timeout: float) -> str:
    connection = await aio_pika.connect(url, timeout=timeout)  # one try, no reconnecting
    try:
        version = connection.transport.connection.server_properties.get("version", "?")
    finally:
        await connection.close()
    return version.decode() if isinstance(version, bytes) else str(version)


@dataclass(frozen=True)
class Broker:
    name: str
    url_variable: str
    url: str
    version: Callable[[str, float], Awaitable[str]]
    compose_service: str
    server: str  # the executable that runs it on this machine, if installed

    @property
    def is_local(self) -> bool:
        return urlsplit(self.url).hostname in ("127.0.0.1", "localhost", "::1")

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or {"Redis": 6379, "RabbitMQ": 5672}[self.name]


BROKERS = {
    "redis": Broker("Redis", "REDIS_URL", config.REDIS_URL, redis_version, "redis", "redis-server"),
    "amqp": Broker(
        "RabbitMQ", "AMQP_URL", config.AMQP_URL, rabbitmq_version, "rabbitmq", "rabbitmq-server"
    ),
}


def is_login_refused(error: BaseException) -> bool:
    return isinstance(error, AuthenticationError | ProbableAuthenticationError)


def describe(error: BaseException) -> str:
    """A short reason a client gave up, without its stack."""
    chain = [error]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    if any(isinstance(e, TimeoutError) for e in chain):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    if any(isinstance(e, ConnectionRefusedError) or ECONNREFUSED in e.args[:1] for e in chain):
        return "connection refused"
    if is_login_refused(error):
        return "login refused"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def quieted(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def probe(broker: Broker, timeout: float = PROBE_TIMEOUT_S) -> str:
    """The broker's version; `BrokerUnavailable` with one sentence if it does not answer."""
    try:
        with quieted(logging.getLogger("aiormq")):  # it logs each refused connect itself
            return await broker.version(broker.url, timeout)
    except Exception as error:
        remedy = (
            f"set {broker.url_variable} with the right user and password"
            if is_login_refused(error)
            else f"start it with `make brokers`, or set {broker.url_variable} to one that runs"
        )
        raise BrokerUnavailable(
            f"{broker.name} does not answer at {config.redacted(broker.url)} "
            f"({describe(error)}): {remedy}."
        ) from None


async def preflight(*needed: str) -> None:
    """Print which brokers answer; raise `BrokerUnavailable` for the first one that does not."""
    failures = []
    for key in needed or tuple(BROKERS):
        broker = BROKERS[key]
        try:
            await probe(broker)
        except BrokerUnavailable as error:
            print(f"{broker.name:<9} DOWN  {config.redacted(broker.url)}")
            failures.append(error)
        else:
            print(f"{broker.name:<9} up    {config.redacted(broker.url)}")
    if failures:
        raise failures[0]


async def wait_until_up(broker: Broker, timeout: float = START_TIMEOUT_S) -> str:
    """Probe until the broker answers (a starting RabbitMQ takes seconds), or give up."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await probe(broker)
        except BrokerUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.25)


def docker_engine_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    checks = (["docker", "info"], ["docker", "compose", "version"])
    return all(subprocess.run(c, capture_output=True).returncode == 0 for c in checks)


def start_local_server(broker: Broker) -> None:
    """Start the installed server, bound to loopback only."""
    port = str(broker.port)
    if broker.name == "Redis":
        workdir = tempfile.mkdtemp(prefix="patterns-redis-")
        command = [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            port,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            os.path.join(workdir, "redis.log"),
        ]
        env = None
    else:
        command = ["rabbitmq-server", "-detached"]
        env = os.environ | {
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": port,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
    subprocess.run(command, check=True, env=env, capture_output=True)


async def bring_up() -> None:
    """Use the brokers that answer; start the others, or say in one sentence what is missing."""
    missing = []
    for broker in BROKERS.values():
        try:
            version = await probe(broker)
            print(f"{broker.name} {version} answers at {config.redacted(broker.url)}")
        except BrokerUnavailable:
            missing.append(broker)
    if not missing:
        return
    remote = [b for b in missing if not b.is_local]
    if remote:
        await probe(remote[0])  # raises the sentence for a broker we must not start
    if docker_engine_runs():
        services = [b.compose_service for b in missing]
        print(f"starting {', '.join(services)} with docker compose")
        compose = ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "up", "-d", "--wait"]
        subprocess.run([*compose, *services], check=True)
    else:
        for broker in missing:
            if shutil.which(broker.server) is None:
                raise BrokerUnavailable(
                    f"{broker.name} does not answer at {config.redacted(broker.url)} and cannot "
                    f"be started here: install Docker (then `docker compose up -d --wait`) or "
                    f"{broker.server} (e.g. `sudo apt install {broker.server}`), or set "
                    f"{broker.url_variable} to a {broker.name} that runs."
                )
            print(f"starting {broker.server} on 127.0.0.1:{broker.port}")
            start_local_server(broker)
    for broker in missing:
        version = await wait_until_up(broker)
        print(f"{broker.name} {version} answers at {config.redacted(broker.url)}")


def main() -> int:
    parser = cli.Parser(prog="python -m patterns.brokers", description=__doc__.splitlines()[0])
    roles = parser.roles()
    roles.add_parser("status", help="say which brokers answer")
    roles.add_parser("up", help="use the brokers that answer, start the others")
    options = parser.parse_args()
    try:
        asyncio.run(bring_up() if options.role == "up" else preflight())
    except BrokerUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
