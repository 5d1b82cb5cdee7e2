"""ZeroMQ DEALER/ROUTER, tuned: every message waiting is read in one go, without an await each.

The same pattern, wire and guarantees as `zeromq` (read that first); only the reading
differs. `zeromq` awaits `socket.recv()` once per message, and each await goes through
the event loop and pyzmq's futures. Here each socket's file descriptor gets one reader
callback, kept for the socket's life, which takes every message there is with
non-blocking `recv` calls, and sends without awaiting. The price is ZeroMQ's own rules,
which `zmq.asyncio` hides: the descriptor signals edges, not levels, so the callback
reads until nothing is left, and a send can consume the signal of a message that
arrived meanwhile, so it looks again after each send.

    python -m patterns.reqrep replier --transport zmq --fast
    python -m patterns.reqrep load --transport zmq --fast --to tcp://127.0.0.1:5030
"""

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from patterns.events import OnEvent, log_event
from patterns.messages import MalformedMessage
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, Requester
from patterns.reqrep.handler import GRACE_S, Handler, ReplierCounts, respond
from patterns.reqrep.zeromq import DEFAULT_ENDPOINT, HEARTBEAT_MS

BATCH = 1_000  # messages read per look at the socket, so that sends get a turn


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
        # no limit on the replies queued: each answers a request of ours, so they are bounded
        # anyway, and a receive queue at its limit with heartbeats on trips an assertion in
        # libzmq (stream_engine_base.cpp, "_input_stopped"), which aborts the process
        self._socket.rcvhwm = 0
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


async def serve(
    handler: Handler, endpoint: str = DEFAULT_ENDPOINT, on_event: OnEvent = log_event
) -> None:
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
        on_event("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
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
        on_event("result", **vars(counts))
