"""ZeroMQ PUB/SUB with pyzmq's `zmq.asyncio`, peer to peer: a publisher binds, subscribers connect.

    publisher = bind_publisher(context, "tcp://127.0.0.1:5000")
    async with subscription(context, ["tcp://127.0.0.1:5000"]) as messages:
        await wait_for_subscribers(publisher, 1)       # the slow-joiner handshake
        await publish(publisher, b"hello")            # the frame `chat hello`
        async for message in messages: ...

Each frame is `<topic> <message>`; a SUB socket subscribes to the topic prefix, and the
publisher filters. No broker: nothing is stored anywhere, and two things lose messages by
design:

* the **slow joiner**: a subscription takes a moment to reach the publisher, and what is
  published before it arrives is not sent to that subscriber. The fix is a handshake, not
  a sleep: the publisher is an XPUB socket, which receives every subscription, so it can
  wait until the subscribers it expects have subscribed;
* the **high-water mark**: a publisher queues at most `hwm` messages per subscriber (a
  subscriber at most `hwm` more); beyond that it drops that subscriber's messages and
  never blocks. Memory stays bounded; a slow subscriber loses messages, the others don't.

ZeroMQ reconnects by itself when a peer goes away and comes back; what the peer published
meanwhile is lost. A socket monitor tells when a connection drops and when it is back.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from patterns.events import OnEvent, log_event

TOPIC = b"chat"  # docs/wire.md: frames are `chat <text>`
HWM = 1_000  # ZeroMQ's default, stated: the bound on what is queued per subscriber


def bind_publisher(
    context: zmq.asyncio.Context, endpoint: str, hwm: int = HWM
) -> zmq.asyncio.Socket:
    """An XPUB socket bound to `endpoint` (port 0: any free one; see LAST_ENDPOINT)."""
    publisher = context.socket(zmq.XPUB)
    publisher.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not just new topics
    publisher.sndhwm = hwm
    publisher.bind(endpoint)
    return publisher


async def wait_for_subscribers(publisher: zmq.asyncio.Socket, count: int) -> None:
    """The slow-joiner handshake: return once `count` subscriptions have arrived."""
    subscribed = 0
    while subscribed < count:
        event = await publisher.recv()  # b"\x01<topic>": subscribe; b"\x00<topic>": unsubscribe
        subscribed += 1 if event[:1] == b"\x01" else -1


async def publish(publisher: zmq.asyncio.Socket, message: bytes, topic: bytes = TOPIC) -> None:
    """Send `<topic> <message>`: queued for every subscriber, dropped where its queue is full."""
    await publisher.send(topic + b" " + message)


@contextlib.asynccontextmanager
async def subscription(
    context: zmq.asyncio.Context,
    endpoints: Sequence[str],
    topic: bytes = TOPIC,
    hwm: int = HWM,
    on_event: OnEvent = log_event,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """A SUB socket connected to every publisher in `endpoints`, subscribed to `topic`."""
    subscriber = context.socket(zmq.SUB)
    subscriber.rcvhwm = hwm
    subscriber.subscribe(topic + b" ")
    monitor = subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    watching = asyncio.create_task(watch(monitor, on_event))
    for endpoint in endpoints:
        subscriber.connect(endpoint)
    try:
        yield messages(subscriber, len(topic) + 1)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        subscriber.disable_monitor()
        monitor.close(linger=0)
        subscriber.close(linger=0)


async def messages(subscriber: zmq.asyncio.Socket, skip: int) -> AsyncIterator[bytes]:
    """Each message, its topic and space cut off, as it arrives."""
    while True:
        frame = await subscriber.recv()
        yield frame[skip:]


async def watch(monitor: zmq.asyncio.Socket, on_event: OnEvent) -> None:
    """Report each connection to a publisher: "connected", "disconnected", "reconnected"."""
    lost: set[str] = set()
    while True:
        event = await recv_monitor_message(monitor)
        peer = event["endpoint"].decode()
        if event["event"] == zmq.EVENT_DISCONNECTED:
            lost.add(peer)
            on_event("disconnected", peer=peer, missed="what it publishes until it is back")
        elif peer in lost:
            lost.discard(peer)
            on_event("reconnected", peer=peer, missed="what it published meanwhile")
        else:
            on_event("connected", peer=peer)
