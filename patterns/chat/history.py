"""The history service of the AMQP chat: a durable queue, stored on disk, served over HTTP.

    python -m patterns.chat history [--port 8090] [--db chat_history.sqlite3]

It consumes the durable queue `chat_history`, bound to the chat's fanout exchange, so
every chat message is copied to it whether or not this service is running: while it is
stopped, messages wait in the queue. It stores each message in SQLite (synchronous: on
disk when committed) and only then acknowledges it (`async with message.process()`), so
a message leaves the queue once it is on disk. A message delivered again (this service
died between storing and acknowledging) is stored once, by its AMQP message id. A body
that is not UTF-8 text, or is over the chat's size limit, is set aside in the `rejected`
table with the reason, and acknowledged.

GET / answers the whole history as a JSON array of strings, oldest first (docs/wire.md);
GET /?last=N only the last N. It is streamed in pages, so memory stays bounded.
"""

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

from aio_pika.abc import AbstractQueue
from aiohttp import web

from patterns import clients
from patterns.chat.server import MAX_MESSAGE_BYTES
from patterns.events import OnEvent, log_event
from patterns.pubsub import amqp_fanout

QUEUE = "chat_history"  # docs/wire.md
PORT = 8090
PAGE_ROWS = 1_000
PREFETCH = 100  # delivered ahead of the acks: stored one by one meanwhile
MAX_LAST = 2**63 - 1  # SQLite's largest integer: ?last=N beyond it is a bad request

log = logging.getLogger("patterns.chat.history")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, message_id TEXT UNIQUE, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, message_id TEXT, body BLOB NOT NULL, reason TEXT NOT NULL);
"""


class Store:
    """The history on disk. Used from worker threads (sqlite3 blocks), one call at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        self.db.execute("PRAGMA synchronous=FULL")  # committed means on disk
        self.db.executescript(SCHEMA)

    def save(self, message_id: str | None, body: bytes) -> str:
        """Store one message: "stored", "duplicate" (stored before) or "rejected"."""
        try:
            if len(body) > MAX_MESSAGE_BYTES:
                raise ValueError(f"{len(body)} bytes, over {MAX_MESSAGE_BYTES}")
            text = body.decode()
        except ValueError as error:  # UnicodeDecodeError is one
            with self.db:
                self.db.execute(
                    "INSERT INTO rejected (message_id, body, reason) VALUES (?, ?, ?)",
                    (message_id, body, str(error)),
                )
            return "rejected"
        with self.db:
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO messages (message_id, text) VALUES (?, ?)",
                (message_id, text),
            )
        return "stored" if cursor.rowcount else "duplicate"

    def page(self, after: int, last: int | None) -> list[tuple[int, str]]:
        """Up to PAGE_ROWS messages after `seq`, or from the last `last` ones on."""
        db = sqlite3.connect(self.path)  # one per call: the writer's is busy in its thread
        try:
            if last is not None and after < 0:
                row = db.execute(
                    "SELECT seq FROM messages ORDER BY seq DESC LIMIT 1 OFFSET ?", (last - 1,)
                ).fetchone()
                after = row[0] - 1 if row else 0
            return db.execute(
                "SELECT seq, text FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (max(after, 0), PAGE_ROWS),
            ).fetchall()
        finally:
            db.close()

    def close(self) -> None:
        self.db.close()


async def history(store: Store, request: web.Request) -> web.StreamResponse:
    try:
        last = int(request.query["last"]) if "last" in request.query else None
        if last is not None and not 1 <= last <= MAX_LAST:
            raise ValueError
    except ValueError:
        raise web.HTTPBadRequest(text=f"last must be an integer from 1 to {MAX_LAST}\n") from None
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    separator, after = b"[", -1
    while rows := await asyncio.to_thread(store.page, after, last):
        texts = ",".join(json.dumps(text, ensure_ascii=False) for _, text in rows)
        await response.write(separator + texts.encode())
        separator, after = b",", rows[-1][0]
    await response.write(b"[]" if separator == b"[" else b"]")
    await response.write_eof()
    return response


async def consume(queue: AbstractQueue, store: Store, on_event: OnEvent = log_event) -> None:
    """Store each message, then ack it: a message leaves the queue once it is on disk."""
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process(requeue=True):  # acked once stored; requeued if not
                outcome = await asyncio.to_thread(store.save, message.message_id, message.body)
            on_event("saved", outcome=outcome, message_id=message.message_id)


async def serve(
    db: Path,
    host: str = "127.0.0.1",
    port: int = PORT,
    exchange: str = amqp_fanout.EXCHANGE,
    queue: str = QUEUE,
    on_event: OnEvent = log_event,
) -> None:
    """Consume `queue` (durable, bound to `exchange`) into `db`; serve it on host:port."""
    store = Store(db)
    app = web.Application()
    app.router.add_get("/", lambda request: history(store, request))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        async with await clients.amqp() as connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            durable = await amqp_fanout.declare_queue(channel, queue, exchange, durable=True)
            site = web.TCPSite(runner, host, port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = f"http://{host}:{port}/"
            log.warning("history of %s on %s, stored in %s", exchange, url, db)
            on_event("ready", port=port, url=url, queue=queue, db=str(db))
            await consume(durable, store, on_event)
    finally:
        await runner.cleanup()
        store.close()
