"""The chat server: a page and a WebSocket on one HTTP port, relaying through a backend.

Each WebSocket text frame a client sends is one chat message. The server publishes it
through the backend and relays every message the backend delivers to all its clients,
as the book's samples do. What a server facing browsers also needs is here too:

* limits: a frame over MAX_MESSAGE_BYTES closes that client with 1009 (message too big),
  a text frame that is not UTF-8 with 1007, a binary frame with 1003; other clients go on;
* a budget per client, messages and bytes per second (a token bucket holding one
  second's worth): a client that floods is closed with 1008 before its flood can swamp
  the instances' subscriptions (Redis disconnects a subscriber that falls tens of MB
  behind);
* bounded memory: a client that reads too slowly, with more than SEND_LIMIT messages
  waiting for it, is closed with 1008 ("too slow") instead of growing the server;
* a WebSocket whose `Origin` is another site's is refused (403), so a page elsewhere
  cannot use a visitor's browser to chat here; `allow_origins` admits others. A client
  that sends no `Origin` (not a browser) is admitted;
* a backend cut off for a while (it resubscribed, reconnected, or its stream was trimmed
  past it): every client is told, with a text frame from the server, that messages may
  have been missed;
* a client that joins gets the backend's history, then live messages;
* shutdown closes every client with 1001 (going away).
"""

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from patterns.chat.backends import MAY_HAVE_MISSED, Backend, ZeroMQ
from patterns.events import OnEvent, log_event

MAX_MESSAGE_BYTES = 4_096  # per chat message, UTF-8 encoded
SEND_LIMIT = 5_000  # messages waiting for one client before it is closed as too slow
MESSAGES_PER_S = 2_000  # a client's budget: a person types far less, a load test as much
BYTES_PER_S = 1 << 20
POLICY = 1008  # policy violation: too slow, or over budget
MISSED = "(server) this chat instance was cut off for a while: messages may have been missed"
PAGE = Path(__file__).with_name("page.html")

log = logging.getLogger("patterns.chat")


@dataclass
class Bucket:
    """A token bucket: `rate` tokens a second, holding at most one second's worth."""

    rate: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def take(self, amount: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return self.tokens >= 0


@dataclass(frozen=True)
class Policy:
    """What the server admits: from which origins, and how much from each client."""

    allow_origins: frozenset[str] = frozenset()
    messages_per_s: float = MESSAGES_PER_S
    bytes_per_s: float = BYTES_PER_S

    def admits(self, request: web.Request) -> bool:
        """A WebSocket from this page's own origin, an allowed one, or no browser at all."""
        origin = request.headers.get("Origin")
        if origin is None or origin in self.allow_origins or "*" in self.allow_origins:
            return True
        return urlsplit(origin).netloc.lower() == request.host.lower()


def overlap(history: Sequence[bytes], live: Sequence[bytes]) -> int:
    """How many of the first live messages are also the last ones of the history."""
    for size in range(min(len(history), len(live)), 0, -1):
        if list(history[-size:]) == list(live[:size]):
            return size
    return 0


class Client:
    """One WebSocket: its budget, and a bounded queue of messages written by its own task."""

    def __init__(self, ws: web.WebSocketResponse, policy: Policy) -> None:
        self.ws = ws
        self.messages = Bucket(policy.messages_per_s)
        self.bytes = Bucket(policy.bytes_per_s)
        self.waiting: deque[str] = deque()
        self.held: list[bytes] | None = []  # live messages that arrive before the history
        self.wakeup = asyncio.Event()
        self.writer = asyncio.create_task(self._write())
        self.closing: asyncio.Task | None = None

    def within_budget(self, size: int) -> bool:
        return self.messages.take(1) & self.bytes.take(size)

    def send(self, text: str, payload: bytes) -> None:
        if self.closing is not None:
            return
        if self.held is not None:
            self.held.append(payload)
        else:
            self.waiting.append(text)
        if len(self.waiting) + len(self.held or ()) > SEND_LIMIT:
            self.writer.cancel()
            self.waiting.clear()
            message = f"too slow: over {SEND_LIMIT} messages waiting".encode()
            self.closing = asyncio.create_task(self.ws.close(code=POLICY, message=message))
        self.wakeup.set()

    def release(self, history: Sequence[bytes], history_may_overlap: bool) -> None:
        """Queue the history, then the live messages held meanwhile (each message once)."""
        held, self.held = self.held or [], None
        skip = overlap(history, held) if history_may_overlap else 0
        for payload in [*history, *held[skip:]]:
            self.send(payload.decode(), payload)

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
    def __init__(self, backend: Backend, policy: Policy, on_event: OnEvent = log_event) -> None:
        self.backend = backend
        self.policy = policy
        self.on_event = on_event
        backend.on_event = self.backend_event  # its news reach the clients too
        self.clients: set[Client] = set()
        self.counts = dict.fromkeys(("published", "relayed", "malformed", "refused"), 0)
        self.counts["notices"] = 0
        self.closed_with: dict[int, int] = {}  # close code -> how many clients
        self.page = PAGE.read_text().replace("{{MAX_MESSAGE_BYTES}}", str(MAX_MESSAGE_BYTES))

    def backend_event(self, event: str, **fields: object) -> None:
        """The backend's connection news: reported, and told to every client when it means
        messages may have been missed."""
        self.on_event(event, **fields)
        if event in MAY_HAVE_MISSED:
            self.counts["notices"] += 1
            for client in list(self.clients):
                client.send(MISSED, MISSED.encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp refuses a message whose size reaches max_msg_size: +1 admits the limit itself
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES + 1, heartbeat=30)
        if not ws.can_prepare(request).ok:  # a plain GET: the page (the same URL)
            return web.Response(text=self.page, content_type="text/html")
        if not self.policy.admits(request):
            self.counts["refused"] += 1
            log.warning("refused a WebSocket from origin %s", request.headers["Origin"])
            return web.Response(status=403, text="this origin may not open a chat here\n")
        await ws.prepare(request)
        await self.serve(ws)
        return ws

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"backend": self.backend.name, "clients": len(self.clients), **self.counts}
            | {"closed_with": self.closed_with}
        )

    async def serve(self, ws: web.WebSocketResponse) -> None:
        client = Client(ws, self.policy)
        self.clients.add(client)  # live messages are held from now on...
        upto = self.backend.history_point()
        code = None  # the close code we chose, if we closed it
        try:
            # ...while the history is fetched, up to where live delivery stood when we joined
            client.release(await self.backend.history(upto), self.backend.history_may_overlap)
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    message = frame.data.encode()
                    if not client.within_budget(len(message)):
                        code = POLICY
                        await ws.close(code=code, message=b"over budget: sending too much")
                        break
                    await self.backend.publish(message)  # the next frame waits for this one
                    self.counts["published"] += 1
                elif frame.type == WSMsgType.BINARY:
                    code = WSCloseCode.UNSUPPORTED_DATA
                    await ws.close(code=code, message=b"text frames only")
                elif frame.type == WSMsgType.ERROR:  # aiohttp has closed it: 1009 or 1007
                    code = getattr(frame.data, "code", None)
                    log.warning("closed a client (%s): %s", code, frame.data)
        finally:
            self.clients.discard(client)
            await client.stop()
            code = int(code or (POLICY if client.closing else ws.close_code) or 0)
            self.closed_with[code] = self.closed_with.get(code, 0) + 1

    async def relay(self) -> None:
        """Every message the backend delivers, to every client; bad ones counted, skipped."""
        async for message in self.backend.messages():
            try:
                if len(message) > MAX_MESSAGE_BYTES:
                    raise ValueError(f"{len(message)} bytes, over {MAX_MESSAGE_BYTES}")
                text = message.decode()
            except ValueError as error:  # UnicodeDecodeError is a ValueError
                self.counts["malformed"] += 1
                log.warning("skipped a message from the backend: %s", error)
                continue
            self.counts["relayed"] += 1
            for client in list(self.clients):
                client.send(text, message)

    async def close_clients(self) -> None:
        await asyncio.gather(
            *(
                c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                for c in self.clients
            ),
            return_exceptions=True,
        )


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(
    backend: Backend, host: str, port: int, policy: Policy, on_event: OnEvent = log_event
) -> None:
    """Serve the chat on host:port (0: any free port) until cancelled."""
    if not loopback(host):
        also = " and so does its ZeroMQ PUB socket" if isinstance(backend, ZeroMQ) else ""
        log.warning(
            "listening on %s: reachable from other machines%s; the chat has no login, so "
            "anyone who can reach it can read and post",
            host,
            also,
        )
    server = ChatServer(backend, policy, on_event)
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
            on_event("ready", port=port, url=url, backend=backend.name, **info)
            await server.relay()
        finally:
            await server.close_clients()
            await backend.stop()
    finally:
        await runner.cleanup()
