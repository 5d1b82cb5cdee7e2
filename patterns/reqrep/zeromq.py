"""Request/reply over ZeroMQ DEALER/ROUTER, with pyzmq's asyncio sockets.

REQ/REP allows one request in flight (notebook 00). DEALER and ROUTER lift that rule:
a DEALER sends and receives whenever it likes, and a ROUTER prefixes every message with
the identity of the connection it came from, so a reply sent with that identity goes
back to the DEALER that asked. Matching a reply to its request is left to us: the
correlation identifier, in the book's JSON envelope, one frame per message.

    python -m patterns.reqrep replier --transport zmq --endpoint tcp://127.0.0.1:5030

    async with zeromq.requester("tcp://127.0.0.1:5030") as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

    # several repliers: the DEALER deals the requests round-robin to those connected
    async with zeromq.requester(["tcp://127.0.0.1:5030", "tcp://127.0.0.1:5031"]) as requester:
        ...

What it guarantees, and how it fails:

* the requester reads replies in a task of its own and settles each as it comes, so any
  number of requests wait at once, in any order;
* ZeroMQ hides connections and reconnects by itself, so the requester watches them with
  a socket monitor: when a replier goes away (its process dies, or it answers no
  heartbeat for 3 s), every pending request fails at once with `ChannelClosed`, after
  the replies it sent before it left have been read (with several repliers, the DEALER
  deals only to those connected, ZeroMQ drops the unread replies of one that leaves, and
  as a DEALER does not say which replier it dealt a request to, the others' pending
  requests fail too);
* with no replier connected, a request waits for one until its timeout, queued nowhere:
  one that timed out is never sent;
* the replier answers every frame: the sum, or an error reply for one it cannot read or
  handle. It never waits for one requester: a reply to a requester that left, or that
  does not read its replies, is dropped and counted (`undeliverable`).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from patterns.events import OnEvent, log_event
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, Requester, RequestTimeout
from patterns.reqrep.handler import GRACE_S, Handler, ReplierCounts, respond

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5030"
HEARTBEAT_MS = 1_000  # a replier that answers no heartbeat for 3 of these is gone


class ZmqRequester(Requester):
    transport = "zmq"

    def __init__(self, endpoint: str | Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(timeout)
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self._socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.heartbeat_ivl = HEARTBEAT_MS
        self._socket.heartbeat_timeout = 3 * HEARTBEAT_MS
        # no limit on the replies queued: each answers a request of ours, so they are bounded
        # anyway, and a receive queue at its limit with heartbeats on trips an assertion in
        # libzmq (stream_engine_base.cpp, "_input_stopped"), which aborts the process
        self._socket.rcvhwm = 0
        # several repliers: deal requests only to those connected now, not to an endpoint
        # still connecting (one that died would otherwise be dealt every other request,
        # until their timeout); ZeroMQ then drops, with the connection, the replies of a
        # replier that left before they were read. One replier: its replies stay readable
        self._socket.immediate = len(self.endpoints) > 1
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._connected = asyncio.Event()  # to at least one replier
        for each in self.endpoints:
            self._socket.connect(each)
        self._reading = asyncio.create_task(self._read_replies())
        self._watching = asyncio.create_task(self._watch())

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        if not self._connected.is_set():  # no replier: wait for one, queue nothing
            try:
                await self._wait_to_send(self._connected.wait(), future)
            except RequestTimeout:
                raise RequestTimeout(request_id, timeout, "no replier was connected") from None
        await self._wait_to_send(self._socket.send(wire.request(request_id, data)), future)

    async def _read_replies(self) -> None:
        while True:
            self._receive(await self._socket.recv())

    def _receive(self, frame: bytes) -> None:
        try:
            request_id, data, error = wire.read_reply(frame)
        except MalformedMessage as problem:
            self._malformed(frame, str(problem))
            return
        self._settle(request_id, data, error)

    async def _watch(self) -> None:
        repliers: set[str] = set()  # the endpoints connected now
        while True:
            event = await recv_monitor_message(self._monitor)
            endpoint = event["endpoint"].decode()
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                repliers.add(endpoint)
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                repliers.discard(endpoint)
                if not repliers:
                    self._connected.clear()
                # the replies it sent before it left may wait in the socket: settle them first
                self._reading.cancel()
                await asyncio.wait([self._reading])
                while self._socket.get(zmq.EVENTS) & zmq.POLLIN:
                    self._receive(await self._socket.recv())
                self._fail_pending(f"the replier at {endpoint} disconnected")
                # ZeroMQ reconnects by itself: later requests may be answered again
                self._reading = asyncio.create_task(self._read_replies())

    async def aclose(self) -> None:
        self._close("the requester was closed")
        self._watching.cancel()  # first: it may start a reader again
        await asyncio.wait([self._watching])
        self._reading.cancel()
        await asyncio.wait([self._reading])
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


@contextlib.asynccontextmanager
async def requester(
    endpoint: str | Sequence[str] = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT_S
) -> AsyncIterator[ZmqRequester]:
    """A DEALER connected to the ROUTER at `endpoint`, or to each of several."""
    zmq_requester = ZmqRequester(endpoint, timeout)
    try:
        yield zmq_requester
    finally:
        await zmq_requester.aclose()


async def serve(
    handler: Handler, endpoint: str = DEFAULT_ENDPOINT, on_event: OnEvent = log_event
) -> None:
    """Answer requests on a ROUTER bound at `endpoint`, each to the connection it came from."""
    counts, answering = ReplierCounts(), set[asyncio.Task]()
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    router.router_mandatory = True  # a reply to a requester that is gone raises: counted

    async def send(envelope: list[bytes], reply: bytes) -> None:
        try:  # at once or not at all: one requester that does not read must not stop us
            await router.send_multipart([*envelope, reply], zmq.NOBLOCK)
        except zmq.ZMQError:  # EAGAIN: it does not read, its queue is full; or it left
            counts.undeliverable += 1

    async def send_later(envelope: list[bytes], reply: Any) -> None:
        await send(envelope, await reply)

    try:
        router.bind(endpoint)
        on_event("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
        while True:
            # [identity, request] from a DEALER; a REQ puts an empty frame between them
            *envelope, request = await router.recv_multipart()
            reply = respond(handler, request, counts)
            if isinstance(reply, bytes):
                await send(envelope, reply)
            else:  # the handler answers later: a task sends it then
                task = asyncio.create_task(send_later(envelope, reply))
                answering.add(task)
                task.add_done_callback(answering.discard)
    finally:  # take no more requests; answer those in hand
        if answering:
            await asyncio.wait(answering, timeout=GRACE_S)
        for task in answering:
            task.cancel()
        router.close(linger=int(GRACE_S * 1000))  # replies still queued get this long to leave
        context.term()  # ...which happens here: the I/O thread sends them, then stops
        on_event("result", **vars(counts))
