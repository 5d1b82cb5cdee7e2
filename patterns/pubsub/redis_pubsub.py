"""Redis Pub/Sub with redis-py: every subscriber connected to a channel gets what is published.

    redis = clients.redis()
    async with subscription(redis, "chat_messages") as messages:
        await publish(redis, b"hello")             # PUBLISH chat_messages hello
        async for message in messages: ...

Redis keeps nothing: a message goes to the subscribers connected at that instant, in
publishing order, and is gone. At most once. Two ways to lose messages:

* **a lost connection**: redis-py reconnects by itself (the client's `Retry`, with backoff,
  for as long as `clients.redis` is patient) and subscribes again, but what was published
  meanwhile never reaches this subscriber. redis-py does not say that it reconnected; Redis
  does, by confirming the subscription again, so `messages` reports that as
  "resubscribed": the moment from which messages may have been missed;
* **a slow subscriber**: what it has not read waits in its output buffer inside Redis, up
  to `client-output-buffer-limit pubsub` (32 MB at once, or 8 MB for 60 s, by default);
  past that Redis closes the connection, and the subscriber resubscribes as above.
"""

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from patterns.events import OnEvent, log_event

CHANNEL = "chat_messages"  # docs/wire.md: the book's chat channel


async def publish(redis: aioredis.Redis, message: bytes, channel: str = CHANNEL) -> int:
    """PUBLISH; how many subscribers Redis handed the message to."""
    return await redis.publish(channel, message)


@contextlib.asynccontextmanager
async def subscription(
    redis: aioredis.Redis, channel: str = CHANNEL, on_event: OnEvent = log_event
) -> AsyncIterator[AsyncIterator[bytes]]:
    """SUBSCRIBE; once entered, everything published to `channel` reaches the messages."""
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=None)  # Redis's confirmation: subscribed from now on
        on_event("subscribed", channel=channel)
        yield messages(pubsub, on_event)


async def messages(pubsub: PubSub, on_event: OnEvent = log_event) -> AsyncIterator[bytes]:
    """Each message published to the subscribed channel, in order, as it arrives."""
    async for message in pubsub.listen():
        if message["type"] == "message":
            yield message["data"]
        elif message["type"] == "subscribe":  # redis-py reconnected and subscribed again
            channel = message["channel"].decode()
            on_event("resubscribed", channel=channel, missed="what was published meanwhile")
