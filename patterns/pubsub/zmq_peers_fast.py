"""ZeroMQ PUB/SUB, tuned for throughput: `zmq_peers` without an `await` per frame.

Same sockets, handshake, guarantees and losses (see `zmq_peers`). What changes:

* publishing: each frame goes out with a non-blocking send on the socket, no coroutine per
  frame (a PUB socket never blocks anyway: at the high-water mark it drops);
* subscribing: one `await` until a frame is ready, then every ready frame (up to BATCH)
  is taken with non-blocking receives. `zmq.asyncio`'s `await socket.recv()` costs a
  future and a trip through the event loop per frame; this pays it once per batch.

Notebook 03's "Going faster" measures it side by side with `zmq_peers` and the raw loop.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import zmq
import zmq.asyncio

from patterns.events import OnEvent, log_event
from patterns.pubsub.zmq_peers import HWM, TOPIC, watch

BATCH = 1_000


def publish_many(
    publisher: zmq.asyncio.Socket, messages: Sequence[bytes], topic: bytes = TOPIC
) -> None:
    """Queue `<topic> <message>` for every subscriber, without a coroutine per frame."""
    plain = zmq.Socket.shadow(publisher.underlying)  # the same socket, synchronous calls
    prefix = topic + b" "
    for message in messages:
        plain.send(prefix + message, zmq.NOBLOCK)  # PUB drops at a full queue, never blocks


@contextlib.asynccontextmanager
async def subscription(
    context: zmq.asyncio.Context,
    endpoints: Sequence[str],
    topic: bytes = TOPIC,
    hwm: int = HWM,
    on_event: OnEvent = log_event,
) -> AsyncIterator[AsyncIterator[list[bytes]]]:
    """A SUB socket connected to every publisher in `endpoints`; batches of messages."""
    subscriber = context.socket(zmq.SUB)
    subscriber.rcvhwm = hwm
    subscriber.subscribe(topic + b" ")
    monitor = subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    watching = asyncio.create_task(watch(monitor, on_event))
    for endpoint in endpoints:
        subscriber.connect(endpoint)
    try:
        yield batches(subscriber, len(topic) + 1)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        subscriber.disable_monitor()
        monitor.close(linger=0)
        subscriber.close(linger=0)


async def batches(subscriber: zmq.asyncio.Socket, skip: int) -> AsyncIterator[list[bytes]]:
    """Wait until a frame is ready, then take every ready one (up to BATCH) without waiting."""
    plain = zmq.Socket.shadow(subscriber.underlying)
    while True:
        await subscriber.poll(flags=zmq.POLLIN)
        batch = []
        with contextlib.suppress(zmq.Again):
            while len(batch) < BATCH:
                batch.append(plain.recv(zmq.NOBLOCK)[skip:])
        yield batch
