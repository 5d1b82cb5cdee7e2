"""Publish/subscribe over four transports, one short module each, as each client library
teaches it:

    redis_pubsub   Redis Pub/Sub (redis-py `PubSub`): live only, at most once
    zmq_peers      ZeroMQ PUB/SUB (`zmq.asyncio`): no broker, drops at the high-water mark
    amqp_fanout    RabbitMQ fanout exchange (aio-pika): a queue per subscriber
    redis_streams  Redis Streams (XADD / XREAD): a log every reader reads from its cursor

Every module has the same two halves: `publish(..., message)` sends one message, and
`async with subscription(...) as messages:` subscribes (once entered, everything published
from then on reaches it) and yields the messages one at a time. Each module's first lines
say what its transport guarantees and how it loses messages.

`*_fast.py` beside a module is the same pattern tuned for throughput, kept only where it
measures at least 1.5x its sibling (notebooks 02-05, "Going faster"); `load` drives either
(and the client libraries by hand) under measured load; `sandbox` starts a private Redis.
"""
