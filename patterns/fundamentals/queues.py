"""A queue is consumed; a stream is read. The same messages, in a Redis list and a stream.

A message on a queue (a Redis list, an AMQP queue) goes to exactly one consumer and is
gone once taken: consumers *compete*. An entry in a stream (a Redis stream, a Kafka topic)
stays where it is: every reader reads all of it, from wherever it likes, and can read it
again. A consumer group turns a stream back into competing consumers, while the entries
stay for anyone else.
"""

import asyncio

import redis.asyncio as aioredis


async def compete(client: aioredis.Redis, key: str, items: list[str], consumers: int = 2):
    """Push `items` onto a list; `consumers` tasks pop until it is empty. Who took what."""
    await client.delete(key)
    await client.rpush(key, *items)

    async def consume() -> list[str]:
        taken = []
        while (item := await client.lpop(key)) is not None:
            taken.append(item.decode())
            await asyncio.sleep(0)  # let the other consumer compete for the next one
        return taken

    return await asyncio.gather(*(consume() for _ in range(consumers)))


async def replay(client: aioredis.Redis, key: str, items: list[str], readers: int = 2):
    """Append `items` to a stream; each reader reads it from the start. What each read."""
    await client.delete(key)
    for item in items:
        await client.xadd(key, {"message": item})

    async def read() -> list[str]:
        return [fields[b"message"].decode() for _, fields in await client.xrange(key)]

    return await asyncio.gather(*(read() for _ in range(readers)))
