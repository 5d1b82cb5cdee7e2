"""Request/reply over ZeroMQ DEALER/ROUTER: the same correlation layer, over the network.

REQ/REP allows one request in flight (notebook 00). DEALER and ROUTER lift that rule:
a DEALER sends and receives whenever it likes, and a ROUTER prefixes every message with
the identity of the connection it came from, so a reply sent with that identity goes
back to the DEALER that asked. Matching a reply to its request is left to us: the
correlation identifier, in the book's JSON envelope, one frame per message.

    python -m patterns.reqrep.replier --transport zmq --endpoint tcp://127.0.0.1:5030

    async with zeromq.requester("tcp://127.0.0.1:5030") as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

ZeroMQ hides connections, and reconnects by itself; the requester watches them through a
socket monitor, so when the replier goes away (its process dies, or it stops answering
heartbeats) every pending request fails at once. Requests made while no replier is
connected wait for one, until their timeout, and are not queued meanwhile: one that timed
out before a replier came is never sent. The monitor keeps that gate, not the `immediate`
option that would do the same: with it, ZeroMQ discards the replies that reached the
socket but were not read yet when the connection closes, so a replier that answers what
it holds and then stops would lose some of its answers on the way.
"""

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from patterns import processes
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, Requester
from patterns.reqrep.replier import GRACE_S, Handler, ReplierCounts, respond

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5030"
HEARTBEAT_MS = 1_000  # a replier that answers no heartbeat for 3 of these is gone
BATCH = 1_000


class ZmqRequester(Requester):
    transport = "zmq"

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(timeout)
        self.endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.heartbeat_ivl = HEARTBEAT_MS
        self._socket.heartbeat_timeout = 3 * HEARTBEAT_MS
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._connected = asyncio.Event()
        self._writable = asyncio.Event()
        self._loop.add_reader(self._socket.FD, self._on_events)
        self._loop.add_reader(self._monitor.FD, self._on_monitor)
        self._socket.connect(endpoint)
        # ZeroMQ signals a socket's file descriptor only after a look found nothing to read
        self._on_events()
        self._on_monitor()

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        frame = wire.request(request_id, data)
        while True:
            if not self._connected.is_set():  # no replier: wait for one, queue nothing
                await self._wait_to_send(self._connected.wait(), future)
            try:
                self._socket.send(frame, zmq.NOBLOCK)
            except zmq.Again:  # the replier's queue is full: wait for room
                self._writable.clear()
                self._on_events()
                if not self._writable.is_set():
                    await self._wait_to_send(self._writable.wait(), future)
            else:
                # a send can consume the socket's wake-up signal: look at its events now
                self._on_events()
                return

    def _on_events(self) -> None:
        """The socket's file descriptor says "something changed": take every reply there is.

        It signals edges, not levels, so the loop below runs until no message is left.
        """
        while (events := self._socket.get(zmq.EVENTS)) & zmq.POLLIN:
            with contextlib.suppress(zmq.Again):
                for _ in range(BATCH):
                    self._receive(self._socket.recv(zmq.NOBLOCK))
        if events & zmq.POLLOUT:
            self._writable.set()

    def _receive(self, frame: bytes) -> None:
        try:
            request_id, data, error = wire.read_reply(frame)
        except MalformedMessage as problem:
            self._malformed(frame, str(problem))
            return
        self._settle(request_id, data, error)

    def _on_monitor(self) -> None:
        while self._monitor.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.clear()
                # replies sent before the replier left may wait in the socket unread (nothing
                # orders its wake-up before the monitor's): settle them before failing the rest
                self._on_events()
                # ZeroMQ reconnects by itself: later requests may be answered again
                self._fail_pending(f"the replier at {self.endpoint} disconnected")

    async def aclose(self) -> None:
        self._close("the requester was closed")
        for socket in (self._monitor, self._socket):
            self._loop.remove_reader(socket.FD)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


@contextlib.asynccontextmanager
async def requester(
    endpoint: str = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT_S
) -> AsyncIterator[ZmqRequester]:
    """A DEALER connected to the ROUTER at `endpoint`."""
    zmq_requester = ZmqRequester(endpoint, timeout)
    try:
        yield zmq_requester
    finally:
        await zmq_requester.aclose()


# ---- the replier: python -m patterns.reqrep.replier --transport zmq ---------------------


async def serve(handler: Handler, endpoint: str = DEFAULT_ENDPOINT) -> None:
    """Answer requests on a ROUTER bound at `endpoint`, each to the connection it came from."""
    counts, waiting = ReplierCounts(), set[asyncio.Task]()
    loop = asyncio.get_running_loop()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.router_mandatory = True  # a reply to a requester that is gone raises, to be counted

    def on_events() -> None:
        """Take every request there is (the descriptor signals edges, as for the requester)."""
        while router.get(zmq.EVENTS) & zmq.POLLIN:
            with contextlib.suppress(zmq.Again):
                for _ in range(BATCH):
                    # [identity, payload] from a DEALER; REQ adds an empty frame between
                    *envelope, payload = router.recv_multipart(zmq.NOBLOCK)
                    reply = respond(handler, payload, counts)
                    if isinstance(reply, bytes):
                        send(envelope, reply)
                    else:
                        task = asyncio.create_task(send_later(envelope, reply))
                        waiting.add(task)
                        task.add_done_callback(waiting.discard)

    def send(envelope: list[bytes], reply: bytes) -> None:
        try:
            router.send_multipart([*envelope, reply], zmq.NOBLOCK)
        except zmq.ZMQError as error:
            if error.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            counts.undeliverable += 1  # the requester left, or does not read its replies

    async def send_later(envelope: list[bytes], reply: Any) -> None:
        send(envelope, await reply)
        on_events()  # the send may have consumed the signal of a request that came meanwhile

    try:
        router.bind(endpoint)
        loop.add_reader(router.FD, on_events)
        processes.report("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
        on_events()
        await loop.create_future()  # until cancelled
    finally:
        loop.remove_reader(router.FD)  # take no more requests; answer those in hand
        if waiting:
            await asyncio.wait(waiting, timeout=GRACE_S)
        for task in waiting:
            task.cancel()
        router.close(linger=int(GRACE_S * 1000))  # replies still queued get this long to leave
        context.term()  # ...which happens here: the I/O thread sends them, then stops
        processes.report("result", **vars(counts))
