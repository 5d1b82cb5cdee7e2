"""Publish/subscribe over four transports, one short module each.

Every module has the same two halves, so the chat server (and a benchmark) can use any:

* a `Publisher`: `await publisher.publish(payloads)` hands a batch of byte strings to the
  transport in one go (a pipeline, a burst of frames, confirms awaited together);
* a `Subscriber`: `async with` it to connect and subscribe (once that returns, everything
  published from then on reaches it), then `async for batch in subscriber.batches()`:
  lists of payloads, as many as were ready, one `await` per batch, not per message.

When a connection drops, a subscriber says so, reconnects with backoff, says so again and
goes on. What it missed meanwhile is what its transport guarantees, and each module says
what that is in its first lines.

    redis_pubsub   Redis Pub/Sub: live only, at most once
    zmq_peers      ZeroMQ PUB/SUB: no broker, drops at the high-water mark
    amqp_fanout    RabbitMQ fanout exchange: a queue per subscriber, exclusive or durable
    redis_streams  Redis Streams: a log every reader reads from its own cursor
"""
