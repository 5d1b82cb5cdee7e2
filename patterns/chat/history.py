"""The history service of the AMQP chat: a durable queue, stored on disk, served over HTTP.

    python -m patterns.chat.history [--port 8090] [--db chat_history.sqlite3]

It consumes the durable queue `chat_history`, bound to the chat's fanout exchange, so
every chat message is copied to it whether or not this service is running: while it is
stopped, messages wait in the queue. It stores each batch in SQLite (one transaction,
synchronous) and only then acknowledges it, so a message leaves the queue once it is on
disk. A message delivered again (this service died between storing and acknowledging) is
stored once, by its AMQP message id. A body that is not UTF-8 text, or is over the chat's
size limit, is set aside in the `rejected` table with the reason, and acknowledged.

GET / answers the whole history as a JSON array of strings, oldest first (WIRE.md);
GET /?last=N only the last N. It is streamed in pages, so memory stays bounded.
"""

import argparse
import asyncio
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiormq.abc import DeliveredMessage

from patterns import config, processes
from patterns.chat.server import MAX_MESSAGE_BYTES, on_state, tell_parent
from patterns.pubsub import amqp_fanout

QUEUE = "chat_history"  # WIRE.md
PORT = 8090
PAGE_ROWS = 1_000

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
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        self.db.execute("PRAGMA synchronous=FULL")  # committed means on disk
        self.db.executescript(SCHEMA)

    def save(self, messages: Sequence[tuple[str | None, bytes]]) -> dict[str, int]:
        """Store a batch in one transaction: how many were new, already stored, rejected."""
        counts = dict.fromkeys(("stored", "duplicates", "rejected"), 0)
        with self.db:
            self.db.execute("BEGIN")
            for message_id, body in messages:
                try:
                    if len(body) > MAX_MESSAGE_BYTES:
                        raise ValueError(f"{len(body)} bytes, over {MAX_MESSAGE_BYTES}")
                    text = body.decode()
                except ValueError as error:  # UnicodeDecodeError is one
                    self.db.execute(
                        "INSERT INTO rejected (message_id, body, reason) VALUES (?, ?, ?)",
                        (message_id, body, str(error)),
                    )
                    counts["rejected"] += 1
                    continue
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO messages (message_id, text) VALUES (?, ?)",
                    (message_id, text),
                )
                counts["stored" if cursor.rowcount else "duplicates"] += 1
        return counts

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
        if last is not None and last < 1:
            raise ValueError
    except ValueError:
        raise web.HTTPBadRequest(text="last must be a positive integer") from None
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


async def consume(subscriber: amqp_fanout.Subscriber, store: Store) -> None:
    """Store each delivered batch; it is acknowledged when the next one is asked for."""
    batch: list[DeliveredMessage]
    async for batch in subscriber.deliveries():
        messages = [(m.header.properties.message_id, m.body) for m in batch]
        counts = await asyncio.to_thread(store.save, messages)
        log.info("saved %s", counts)
        tell_parent("saved", **counts)


async def serve(db: Path, host: str, port: int, exchange: str, queue: str) -> None:
    store = Store(db)
    app = web.Application()
    app.router.add_get("/", lambda request: history(store, request))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        subscriber = amqp_fanout.Subscriber(
            config.AMQP_URL, queue, exchange, durable=True, on_state=on_state
        )
        async with subscriber:
            site = web.TCPSite(runner, host, port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = f"http://{host}:{port}/"
            log.warning("history of %s on %s, stored in %s", exchange, url, db)
            processes.report("ready", port=port, url=url, queue=queue, db=str(db))
            await consume(subscriber, store)
    finally:
        await runner.cleanup()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m patterns.chat.history", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=PORT, help="0: any free port")
    parser.add_argument("--db", type=Path, default=Path("chat_history.sqlite3"))
    parser.add_argument("--exchange", default=amqp_fanout.EXCHANGE)
    parser.add_argument("--queue", default=QUEUE)
    options = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", level=logging.INFO)
    processes.run(serve(options.db, options.host, options.port, options.exchange, options.queue))


if __name__ == "__main__":
    main()
