"""Connecting to the brokers, the same way everywhere: one backoff, one error set per client.

    redis = clients.redis()                  # a redis.asyncio.Redis that rides out a restart
    connection = await clients.amqp()        # an aio-pika robust connection

Both clients reconnect by themselves; this module only sets them up alike and decides
what is worth waiting for:

* a broker that refuses or drops connections (it is restarting, the network blinked) is
  waited for, with one backoff (`BACKOFF`: 50 ms doubling to 2 s, jittered) and one log
  line per step, for at most `patience` seconds (`config.GIVE_UP_AFTER_S` unless given);
  then `BrokerLost`;
* what no wait can fix is one sentence at once (`Misconfigured`): a malformed URL, a host
  name that does not resolve, a refused login, an unknown virtual host.

Redis: redis-py retries every command on a lost connection with the `Retry` given to the
client (`Patient` below, a `Retry` with a time limit), resubscribes a `PubSub`, and pings
an idle connection every `HEALTH_CHECK_S`. AMQP: aio-pika's robust connection reconnects
every `RECONNECT_S`, then declares again what was declared on it and restarts its
consumers; `amqp()` waits for the first connection itself, and gives up on a connection
that stays lost for longer than `patience`.
"""

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from yarl import URL

from patterns import config

log = logging.getLogger("patterns.clients")

T = TypeVar("T")
BACKOFF = EqualJitterBackoff(cap=2.0, base=0.05)  # the one backoff: 50 ms .. 2 s, jittered
HEALTH_CHECK_S = 10.0  # redis-py pings a connection idle for this long before using it
RECONNECT_S = 1.0  # aio-pika's robust connection tries again this often
CONNECT_TIMEOUT_S = 5.0

# "the broker is gone for now": the errors worth a retry, one set per client
REDIS_LOST = (redis_errors.ConnectionError, redis_errors.TimeoutError)
AMQP_LOST = (
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,  # its channel closed with the connection
    ConnectionError,
    OSError,
    TimeoutError,
)


class Misconfigured(RuntimeError):
    """A broker URL or its credentials are wrong: the message says which and what to check."""


class BrokerLost(ConnectionError):
    """A broker stayed unreachable for longer than the patience given."""


# ---- what no retry can fix --------------------------------------------------------------


def check_url(url: str, variable: str, schemes: tuple[str, ...]) -> None:
    """`Misconfigured` unless `url` is a well-formed URL of one of `schemes`."""
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in schemes or "://" not in url:
        problem = f"it must start with {' or '.join(s + '://' for s in schemes)}"
    elif not parts.hostname:
        problem = "it names no host"
    elif variable == "REDIS_URL" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        problem = f"its path must be a database number, not {parts.path!r}"
    else:
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            problem = f"its port is not a number ({parts.netloc.rpartition(':')[2]!r})"
    if problem:
        raise Misconfigured(f"{variable}={config.redacted(url)!r} is not a valid URL: {problem}.")


def _unresolvable(error: BaseException) -> bool:
    """Did this error start with a host name that does not resolve?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, socket.gaierror) or getattr(seen, "errno", None) in (-2, -3, -5):
            return True
        if isinstance(seen.args[:1], tuple) and seen.args[:1] in ((-2,), (-3,), (-5,)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refusal(name: str, variable: str, url: str, error: BaseException) -> Misconfigured | None:
    """The sentence for an error no retry can fix, or None if waiting may help."""
    where = config.redacted(url)
    if isinstance(error, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return Misconfigured(
            f"{name} at {where} refused the login ({error}): check the user and password "
            f"in {variable}."
        )
    if isinstance(error, aio_pika.exceptions.ProbableAuthenticationError):
        user = unquote(urlsplit(url).username or "guest")
        return Misconfigured(
            f"{name} at {where} refused the login of user {user!r}: check the user and "
            f"password in {variable}."
        )
    if isinstance(error, aio_pika.exceptions.ProtocolSyntaxError):  # Connection.Close at open
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        return Misconfigured(
            f"{name} at {where} refused to open virtual host {vhost!r}: check "
            f"that it exists and that the user may use it."
        )
    if isinstance(error, redis_errors.ResponseError):  # e.g. a database index too high
        return Misconfigured(f"{name} at {where} refused the connection: {error}.")
    if _unresolvable(error):
        host = urlsplit(url).hostname
        return Misconfigured(f"{name} at {where}: the host name {host!r} does not resolve.")
    return None


def reason(error: BaseException) -> str:
    """A short reason, without the stack."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Patience:
    """One backoff over a limited time: `wait(error)` sleeps the next step, or raises
    `BrokerLost` once `patience` seconds have gone by since the first failure."""

    def __init__(self, name: str, url: str, patience: float | None = None) -> None:
        self.name, self.url = name, url
        self.patience = config.GIVE_UP_AFTER_S if patience is None else patience
        self.failures = 0
        self.since = 0.0

    async def wait(self, error: BaseException) -> None:
        now = time.monotonic()
        if not self.failures:
            self.since = now
        self.failures += 1
        if now - self.since > self.patience:
            raise BrokerLost(
                f"{self.name} at {config.redacted(self.url)} was unreachable for "
                f"{now - self.since:.0f} s ({reason(error)}): gave up."
            ) from None
        delay = BACKOFF.compute(self.failures)
        log.warning(
            "%s at %s: %s; trying again in %.2f s",
            self.name,
            config.redacted(self.url),
            reason(error),
            delay,
        )
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self.failures = 0


# ---- Redis ------------------------------------------------------------------------------


class Patient(Retry):
    """redis-py's `Retry`, with `Patience` deciding: a lost connection is retried with the
    backoff until the patience runs out; a refused login is not retried at all."""

    def __init__(self, url: str, patience: float | None = None) -> None:
        super().__init__(BACKOFF, retries=-1, supported_errors=REDIS_LOST)
        self.url, self.patience = url, patience  # None: config.GIVE_UP_AFTER_S

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        patience = Patience("Redis", self.url, self.patience)
        while True:
            try:
                return await do()
            except REDIS_LOST as error:
                if (refusal := _refusal("Redis", "REDIS_URL", self.url, error)) is not None:
                    raise refusal from None
                if is_retryable is not None and not is_retryable(error):
                    raise
                await patience.wait(error)
                await (fail(error, patience.failures) if with_failure_count else fail(error))


def redis(
    url: str | None = None,
    patience: float | None = None,
    max_connections: int | None = None,
    **options: Any,
) -> aioredis.Redis:
    """A Redis client that waits out a lost connection for up to `patience` seconds.

    Each command in flight holds a connection of the client's pool. With `max_connections`,
    a command that finds them all busy waits for one (redis-py's `BlockingConnectionPool`)
    instead of failing with "Too many connections" past redis-py's default of 100.
    """
    url = url or config.REDIS_URL
    check_url(url, "REDIS_URL", ("redis", "rediss"))
    options = {
        "retry": Patient(url, patience),
        "health_check_interval": HEALTH_CHECK_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    } | options
    if max_connections is None:
        return aioredis.from_url(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=None, **options
    )
    return aioredis.Redis.from_pool(pool)


# ---- AMQP -------------------------------------------------------------------------------


async def amqp(
    url: str | None = None, patience: float | None = None
) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection to RabbitMQ, once it answers (waiting up to `patience` s).

    Later, if the connection is lost and not back within `patience` seconds, it is closed
    with `BrokerLost`: whatever waits on it (a consumer, a publish) fails with that.
    """
    url = url or config.AMQP_URL
    check_url(url, "AMQP_URL", ("amqp", "amqps"))
    waiting = Patience("RabbitMQ", url, patience)
    while True:
        # what aio_pika.connect_robust does, plus a close when the first connect fails
        connection = aio_pika.RobustConnection(URL(url), reconnect_interval=RECONNECT_S)
        try:
            with quiet("aiormq", "aio_pika"):  # they log each refused attempt; we do, once
                await connection.connect(timeout=CONNECT_TIMEOUT_S)
            break
        except Exception as error:
            await connection.close()
            if (refusal := _refusal("RabbitMQ", "AMQP_URL", url, error)) is not None:
                raise refusal from None
            if not isinstance(error, AMQP_LOST):
                raise
            await waiting.wait(error)
    _give_up_after(connection, url, waiting.patience)
    return connection


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Only these loggers' critical records, for a while (a client's own noise on a
    connection that is expected to fail)."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _give_up_after(
    connection: aio_pika.abc.AbstractRobustConnection, url: str, patience: float
) -> None:
    """Close `connection` with `BrokerLost` if it stays lost for longer than `patience`."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None
    closing: set[asyncio.Task] = set()

    def give_up() -> None:
        if connection.is_closed:  # its owner closed it meanwhile: nothing left to give up
            return
        error = BrokerLost(
            f"RabbitMQ at {config.redacted(url)} was unreachable for {patience:g} s: gave up."
        )
        log.error("%s", error)
        closing.add(loop.create_task(connection.close(error)))

    def lost(_: object, error: BaseException | type[BaseException] | None) -> None:
        nonlocal timer
        closed_by_us = (
            error is None
            or error is asyncio.CancelledError
            or isinstance(error, asyncio.CancelledError)
        )
        if timer is None and not closed_by_us:
            log.warning("RabbitMQ at %s: connection lost (%s)", config.redacted(url), error)
            timer = loop.call_later(patience, give_up)

    def back(_: object) -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
            timer = None
            log.warning("RabbitMQ at %s: connected again", config.redacted(url))

    connection.close_callbacks.add(lost)
    connection.reconnect_callbacks.add(back)
