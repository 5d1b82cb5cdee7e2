"""Looking after a run's channels on the brokers: what a notebook or a test does around a job.

Delete a run's queues and streams, put raw bytes on the task channel (how a poison task
gets there), read the dead letters and the group's pending entries. Never the book's
channels: a reader's job may be using them.
"""

import asyncio
import atexit
import contextlib
from typing import Any

import aio_pika

from patterns import clients
from patterns.tasks.amqp import PERSISTENT, declare
from patterns.tasks.job import DEFAULTS, Channels, unique
from patterns.tasks.streams import ensure_group


def private_channels(transport: str, label: str) -> Channels:
    """Channels of this run only, deleted when the process exits if not before."""
    channels = unique(transport, label)
    atexit.register(_delete_now, transport, channels)
    return channels


def _delete_now(transport: str, channels: Channels) -> None:
    with contextlib.suppress(Exception):  # at exit, a broker that is gone is no error
        asyncio.run(delete(transport, channels))


async def delete(transport: str, channels: Channels) -> None:
    """Delete what a run with these (unique) channels left on the broker."""
    if channels in DEFAULTS.values():
        raise ValueError("the book's channels may be in use by someone else: not deleted")
    names = [channels.tasks, channels.results, channels.reports, channels.dead]
    if transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            for queue in names:
                await channel.queue_delete(queue)
            await channel.exchange_delete(channels.control)
    elif transport == "streams":
        async with clients.redis() as redis:
            await redis.delete(*names, channels.control)


async def put_raw(transport: str, channels: Channels, bodies: list[bytes | dict]) -> None:
    """Put messages on the task channel as they are (a dict: a stream entry's fields)."""
    if transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await declare(channel, channels)
            for body in bodies:
                message = aio_pika.Message(body, delivery_mode=PERSISTENT)  # type: ignore[arg-type]
                await channel.default_exchange.publish(message, routing_key=channels.tasks)
    else:
        async with clients.redis() as redis:
            await ensure_group(redis, channels.tasks, channels.group)
            for body in bodies:
                await redis.xadd(channels.tasks, body if isinstance(body, dict) else {"task": body})


async def dead_letters(transport: str, channels: Channels) -> list[dict[str, Any]]:
    """The dead letters: the task as it came, and why it was set aside."""
    letters = []
    if transport == "amqp":
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(channels.dead, durable=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                headers = message.headers or {}
                letters.append(
                    {
                        "task": message.body.decode(errors="replace"),
                        "reason": headers.get("x-reason"),
                    }
                )
    else:
        async with clients.redis() as redis:
            for _, fields in await redis.xrange(channels.dead):
                letters.append({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
    return letters


async def pending(channels: Channels) -> dict[str, Any]:
    """The group's pending-entries list (Streams): XPENDING's summary and its entries."""
    async with clients.redis() as redis:
        summary = await redis.xpending(channels.tasks, channels.group)
        entries = await redis.xpending_range(channels.tasks, channels.group, "-", "+", 100)
    return {
        "pending": summary["pending"],
        "consumers": {c["name"].decode(): c["pending"] for c in summary["consumers"]},
        "entries": [
            {
                "id": e["message_id"].decode(),
                "consumer": e["consumer"].decode(),
                "idle_ms": e["time_since_delivered"],
                "deliveries": e["times_delivered"],
            }
            for e in entries
        ],
    }
