"""The chat server: a page and a WebSocket on one HTTP port, relaying through a backend.

Each WebSocket text frame a client sends is one chat message. The server publishes it
through the backend and relays every message the backend delivers to all its clients,
as the book's samples do. What a production server also needs is here too:

* limits: a frame over MAX_MESSAGE_BYTES closes that client with 1009 (message too big),
  a text frame that is not UTF-8 with 1007, a binary frame with 1003; other clients go on;
* bounded memory: a client that reads too slowly, with more than SEND_LIMIT messages
  waiting for it, is closed with 1008 ("too slow") instead of growing the server;
  messages waiting to be published are bounded by OUTBOX, beyond which the server stops
  reading from clients (TCP pushes back to them) until the backend takes more;
* a backend that goes away: publishing retries with backoff until it takes the batch
  (at least once: a batch cut midway may go out twice); the subscriber side reconnects
  and says so; what was missed meanwhile is the backend's guarantee;
* a client that joins gets the backend's history, then live messages;
* shutdown closes every client with 1001 (going away).
"""

import argparse
import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from patterns import processes
from patterns.chat.backends import BACKENDS, Backend, ZeroMQ
from patterns.pubsub.retry import Backoff, reason

MAX_MESSAGE_BYTES = 4_096  # per chat message, UTF-8 encoded
SEND_LIMIT = 5_000  # messages waiting for one client before it is closed as too slow
OUTBOX = 1_000  # messages waiting to be published before clients are no longer read
PUBLISH_BATCH = 1_000
TOO_SLOW = 1008  # policy violation
PAGE = Path(__file__).with_name("page.html")

log = logging.getLogger("patterns.chat")


def overlap(history: Sequence[bytes], live: Sequence[bytes]) -> int:
    """How many of the first live messages are also the last ones of the history."""
    for size in range(min(len(history), len(live)), 0, -1):
        if list(history[-size:]) == list(live[:size]):
            return size
    return 0


class Client:
    """One WebSocket: a bounded queue of messages to send, written by its own task."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.waiting: deque[str] = deque()
        self.held: list[bytes] | None = []  # live messages that arrive before the history
        self.wakeup = asyncio.Event()
        self.writer = asyncio.create_task(self._write())
        self.closing: asyncio.Task | None = None

    def send(self, texts: Sequence[str], payloads: Sequence[bytes]) -> None:
        if self.closing is not None:
            return
        if self.held is not None:
            self.held.extend(payloads)
        else:
            self.waiting.extend(texts)
        if len(self.waiting) + len(self.held or ()) > SEND_LIMIT and self.closing is None:
            self.writer.cancel()
            self.waiting.clear()
            message = f"too slow: over {SEND_LIMIT} messages waiting".encode()
            self.closing = asyncio.create_task(self.ws.close(code=TOO_SLOW, message=message))
        self.wakeup.set()

    def release(self, history: Sequence[bytes], history_may_overlap: bool) -> None:
        """Queue the history, then the live messages held meanwhile (each message once)."""
        held, self.held = self.held or [], None
        skip = overlap(history, held) if history_may_overlap else 0
        self.send([p.decode() for p in [*history, *held[skip:]]], [])

    async def _write(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.waiting:
                await self.ws.send_str(self.waiting.popleft())

    async def stop(self) -> None:
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self.writer


class ChatServer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.clients: set[Client] = set()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue(OUTBOX)
        self.counts = dict.fromkeys(("published", "relayed", "malformed"), 0)
        self.closed_with: dict[int, int] = {}  # close code -> how many clients
        self.page = PAGE.read_text().replace("{{MAX_MESSAGE_BYTES}}", str(MAX_MESSAGE_BYTES))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp refuses a message whose size reaches max_msg_size: +1 admits the limit itself
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES + 1, heartbeat=30)
        if not ws.can_prepare(request).ok:  # a plain GET: the page (WIRE.md: same URL)
            return web.Response(text=self.page, content_type="text/html")
        await ws.prepare(request)
        await self.serve(ws)
        return ws

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"backend": self.backend.name, "clients": len(self.clients), **self.counts}
            | {"closed_with": self.closed_with}
        )

    async def serve(self, ws: web.WebSocketResponse) -> None:
        client = Client(ws)
        self.clients.add(client)  # live messages are held from now on...
        upto = self.backend.history_point()
        code = None  # the close code we chose, if we closed it
        try:
            # ...while the history is fetched, up to where live delivery stood when we joined
            client.release(await self.backend.history(upto), self.backend.history_may_overlap)
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    await self.outbox.put(frame.data.encode())  # waits while the outbox is full
                elif frame.type == WSMsgType.BINARY:
                    code = WSCloseCode.UNSUPPORTED_DATA
                    await ws.close(code=code, message=b"text frames only")
                elif frame.type == WSMsgType.ERROR:  # aiohttp has closed it: 1009 or 1007
                    code = getattr(frame.data, "code", None)
                    log.warning("closed a client (%s): %s", code, frame.data)
        finally:
            self.clients.discard(client)
            await client.stop()
            code = int(code or (TOO_SLOW if client.closing else ws.close_code) or 0)
            self.closed_with[code] = self.closed_with.get(code, 0) + 1

    async def relay(self) -> None:
        """Everything the backend delivers, to every client; bad payloads counted and skipped."""
        async for batch in self.backend.batches():
            texts, payloads = [], []
            for payload in batch:
                try:
                    if len(payload) > MAX_MESSAGE_BYTES:
                        raise ValueError(f"{len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
                    texts.append(payload.decode())
                    payloads.append(payload)
                except ValueError as error:  # UnicodeDecodeError is a ValueError
                    self.counts["malformed"] += 1
                    log.warning("skipped a message from the backend: %s", reason(error))
            self.counts["relayed"] += len(texts)
            for client in list(self.clients):
                client.send(texts, payloads)

    async def publish(self) -> None:
        """Drain the outbox into the backend, a batch at a time, retrying until it is taken."""
        while True:
            batch = [await self.outbox.get()]
            while len(batch) < PUBLISH_BATCH and not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            backoff, failed = Backoff(), False
            while True:
                try:
                    await self.backend.publish(batch)
                    break
                except Exception as error:  # any backend's lost connection: retry, say so
                    failed = True
                    log.warning("cannot publish %d messages yet: %s", len(batch), reason(error))
                    await backoff.wait()
            if failed:
                log.warning("published the %d waiting messages", len(batch))
            self.counts["published"] += len(batch)

    async def close_clients(self) -> None:
        await asyncio.gather(
            *(
                c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                for c in self.clients
            ),
            return_exceptions=True,
        )


def tell_parent(event: str, **fields: object) -> None:
    """Report to the parent process, if there is one (in a terminal, the log says it all)."""
    if processes.REPORT_FD in os.environ:
        processes.report(event, **fields)


def on_state(state: str, detail: str) -> None:
    """A backend's connection news: logged, and told to a parent process."""
    log.warning("backend %s: %s", state, detail)
    tell_parent("state", state=state, detail=detail)


async def serve(backend: Backend, host: str, port: int) -> None:
    server = ChatServer(backend)
    app = web.Application()
    app.router.add_get("/", server.handle)
    app.router.add_get("/stats", server.stats)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        info = await backend.start(port)
        try:
            url = f"http://{host}:{port}/"
            log.warning("chat on %s, backend %s %s", url, backend.name, info)
            processes.report("ready", port=port, url=url, backend=backend.name, **info)
            await processes.together(server.relay(), server.publish())
        finally:
            await server.close_clients()
            await backend.stop()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m patterns.chat", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", "--http", type=int, default=8080, help="0: any free port")
    parser.add_argument(
        "--topic", help="the channel, exchange or stream (default: the book's, per backend)"
    )
    parser.add_argument("--pub", type=int, default=5000, help="zmq: the port to publish on")
    parser.add_argument("--sub", type=int, action="append", default=[], help="zmq: a peer's port")
    parser.add_argument("--history-url", default="", help="amqp: the history service")
    parser.add_argument("--maxlen", type=int, default=0, help="streams: ~ entries kept")
    options = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    kind = BACKENDS[options.backend]
    if kind is ZeroMQ:
        backend: Backend = ZeroMQ(
            options.topic,
            on_state,
            pub=f"tcp://{options.host}:{options.pub}",
            subs=[f"tcp://{options.host}:{port}" for port in options.sub],
        )
    elif options.backend == "amqp":
        backend = kind(options.topic, on_state, history_url=options.history_url)  # type: ignore[call-arg]
    elif options.backend == "streams":
        backend = kind(options.topic, on_state, maxlen=options.maxlen)  # type: ignore[call-arg]
    else:
        backend = kind(options.topic, on_state)
    processes.run(serve(backend, options.host, options.port))
