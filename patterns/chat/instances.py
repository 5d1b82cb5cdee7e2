"""Start chat instances (and the history service) as child processes, and clean up after.

The notebooks and tests run several instances side by side: each on a free HTTP port,
on a topic of their own (a channel, exchange or stream name) so they never mix with a chat
a reader runs on the book's defaults.
"""

from pathlib import Path

from patterns import clients, processes
from patterns.processes import Child, free_port


async def start(
    started: list[Child],
    backend: str,
    count: int,
    topic: str,
    *options: str,
    history_url: str = "",
    env: dict[str, str] | None = None,
) -> list[Child]:
    """`count` instances of `backend` (each also given `options`); ZeroMQ ones bind a PUB
    port each and subscribe to all the others' (the book's mesh). All start at once: a
    ZeroMQ instance is ready only when its peers have subscribed to it. Each is appended
    to `started` as soon as it runs."""
    pubs = [free_port() for _ in range(count)] if backend == "zmq" else []
    instances = []
    for index in range(count):
        args = ["server", "--backend", backend, "--http", "0", "--topic", topic, *options]
        if backend == "zmq":
            args += ["--pub", str(pubs[index])]
            args += [f"--sub={port}" for i, port in enumerate(pubs) if i != index]
        if history_url:
            args += ["--history-url", history_url]
        child = await processes.start(
            "patterns.chat", *args, name=f"chat {index}", env=env, wait_ready=False
        )
        started.append(child)
        instances.append(child)
    for child in instances:
        child.ready = await child.next_report("ready", timeout=processes.READY_TIMEOUT_S)
    return instances


async def start_history(
    started: list[Child], exchange: str, queue: str, db: Path, env: dict[str, str] | None = None
) -> Child:
    child = await processes.start(
        "patterns.chat",
        *("history", "--port", "0", "--exchange", exchange, "--queue", queue, "--db", str(db)),
        name="history",
        env=env,
    )
    started.append(child)
    return child


async def clean(topic: str, queues: tuple[str, ...] = ()) -> None:
    """Delete what a run on `topic` left in the brokers: the stream, the exchange, queues."""
    async with clients.redis() as redis:
        await redis.delete(topic)
    async with await clients.amqp() as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        await channel.exchange_delete(topic)
