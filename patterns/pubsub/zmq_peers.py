"""ZeroMQ PUB/SUB, peer to peer: no broker; a publisher binds, its subscribers connect to it.

Each frame is `<topic> <payload>`; a SUB socket subscribes to the topic prefix and the
filtering happens at the publisher. Nothing is stored anywhere, and two things lose
messages by design, both shown in notebook 03:

* the **slow joiner**: a subscriber's connection and subscription take a moment to reach
  the publisher, and everything published before that is not sent to it. The fix is a
  handshake, not a sleep: the publisher is an XPUB socket, which receives each
  subscription, so it can wait until the subscribers it expects have subscribed.
* the **high-water mark**: a publisher queues at most `hwm` messages per subscriber (and
  a subscriber at most `hwm` more); beyond that it drops messages for that subscriber and
  never blocks. Memory stays bounded; a slow subscriber loses messages, the others don't.

ZeroMQ reconnects by itself when a peer goes away and comes back; a socket monitor tells
us when, so the chat server can say so.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from patterns.pubsub.retry import OnState, log_state

TOPIC = b"chat"  # WIRE.md: frames are `chat <text>`
HWM = 1000  # ZeroMQ's default, stated: the bound on memory per subscriber
BATCH = 1000


class Publisher:
    """An XPUB socket bound to `endpoint` (port 0: any free port, see `.endpoint`)."""

    def __init__(
        self, context: zmq.asyncio.Context, endpoint: str, topic: bytes = TOPIC, hwm: int = HWM
    ) -> None:
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not just new topics
        self.socket.sndhwm = hwm
        self.socket.linger = 0
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.prefix = topic + b" "
        self.subscribers = 0
        self._nonblocking = zmq.Socket.shadow(self.socket.underlying)

    async def wait_for_subscribers(self, count: int) -> None:
        """The slow-joiner handshake: return once `count` subscriptions have arrived."""
        while self.subscribers < count:
            await self.next_subscription()

    async def next_subscription(self) -> bool:
        """Wait for one (un)subscription; True if it was a subscription."""
        event = await self.socket.recv()
        subscribed = event[:1] == b"\x01"
        self.subscribers += 1 if subscribed else -1
        return subscribed

    async def publish(self, payloads: Sequence[bytes]) -> None:
        prefix, send = self.prefix, self._nonblocking.send
        for payload in payloads:
            send(prefix + payload, zmq.NOBLOCK)  # dropped, not blocked, at a full HWM

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket. What is still queued for a subscriber is dropped, unless
        `linger_ms` gives it that long to leave (the context's `term` waits for it)."""
        self.socket.close(linger=linger_ms)


class Subscriber:
    """A SUB socket connected to every publisher in `endpoints`."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoints: Sequence[str],
        topic: bytes = TOPIC,
        hwm: int = HWM,
        on_state: OnState = log_state,
    ) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.rcvhwm = hwm
        self.socket.linger = 0
        self.socket.setsockopt(zmq.SUBSCRIBE, topic + b" ")
        self.on_state = on_state
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._watch = asyncio.create_task(self._watch_peers())
        for endpoint in endpoints:
            self.socket.connect(endpoint)
        self.skip = len(topic) + 1

    async def _watch_peers(self) -> None:
        while True:
            event = await recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                self.on_state("connected", f"to {event['endpoint'].decode()}")
            else:
                self.on_state("lost", f"{event['endpoint'].decode()}; ZeroMQ reconnects by itself")

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Wait until a frame is ready, then take every ready one (up to BATCH) without waiting."""
        nonblocking = zmq.Socket.shadow(self.socket.underlying)
        skip = self.skip
        while True:
            await self.socket.poll(flags=zmq.POLLIN)
            batch = []
            with contextlib.suppress(zmq.Again):
                while len(batch) < BATCH:
                    batch.append(nonblocking.recv(zmq.NOBLOCK)[skip:])
            yield batch

    async def aclose(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        self.socket.disable_monitor()
        self._monitor.close()
        self.socket.close()
