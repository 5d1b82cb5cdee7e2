"""python -m patterns.chat server|history [options]: a chat instance, or the history service.

    python -m patterns.chat server --backend redis --http 8081
    python -m patterns.chat server --backend zmq --http 8080 --pub 5000 --sub 5001 --sub 5002
    python -m patterns.chat history --port 8090 --db chat_history.sqlite3

Open http://127.0.0.1:8081/ in a browser. `python -m patterns.chat ROLE --help` lists a
role's options; the defaults are the book's names and ports. Each prints JSON lines (its
reports: "ready", connection news, "saved") on stdout and its log on stderr.
"""

import argparse
from pathlib import Path

from patterns import cli, processes
from patterns.chat import history, server
from patterns.chat.backends import BACKENDS, Amqp, Backend, RedisStreams, ZeroMQ


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text}")
    return value


def peer(text: str) -> str:
    """A peer's PUB socket: PORT (on 127.0.0.1) or HOST:PORT."""
    host, _, number = text.rpartition(":")
    return f"tcp://{host or '127.0.0.1'}:{port(number)}"


def parser() -> cli.Parser:
    top = cli.Parser(
        prog="python -m patterns.chat",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roles = top.roles()
    chat = roles.add_parser("server", help="a chat instance: the page and its WebSocket")
    keeper = roles.add_parser("history", help="the AMQP backend's history service")
    chat.add_argument("--backend", choices=sorted(BACKENDS), default="local")
    chat.add_argument("--host", default="127.0.0.1", help="beyond loopback: a warning")
    chat.add_argument("--http", "--port", type=port, default=8080, help="0: any free port")
    chat.add_argument("--topic", help="channel, exchange or stream (default: the book's)")
    chat.add_argument("--pub", type=port, default=5000, help="zmq: the port to publish on")
    chat.add_argument(
        "--sub", type=peer, action="append", default=[], help="zmq: a peer's PORT or HOST:PORT"
    )
    chat.add_argument("--history-url", default="", help="amqp: the history service")
    chat.add_argument("--maxlen", type=int, default=0, help="streams: about this many kept")
    chat.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a page elsewhere allowed to open a WebSocket here (e.g. http://example.org)",
    )
    chat.add_argument(
        "--max-messages-per-s",
        type=cli.positive,
        default=server.MESSAGES_PER_S,
        metavar="N",
        help="a client sending more is closed with 1008 (default %(default)s)",
    )
    chat.add_argument(
        "--max-bytes-per-s",
        type=cli.positive,
        default=server.BYTES_PER_S,
        metavar="N",
        help="likewise, in bytes (default %(default)s)",
    )
    keeper.add_argument("--host", default="127.0.0.1")
    keeper.add_argument("--port", type=port, default=history.PORT, help="0: any free port")
    keeper.add_argument("--db", type=Path, default=Path("chat_history.sqlite3"))
    keeper.add_argument("--exchange", default="chat")
    keeper.add_argument("--queue", default=history.QUEUE)
    for role in (chat, keeper):
        cli.add_give_up(role)
    return top


def backend(options: argparse.Namespace) -> Backend:
    kind, topic, report = BACKENDS[options.backend], options.topic, processes.report
    if kind is ZeroMQ:  # binds where the HTTP server does
        return ZeroMQ(topic, report, pub=f"tcp://{options.host}:{options.pub}", subs=options.sub)
    if kind is Amqp:
        return Amqp(topic, report, history_url=options.history_url)
    if kind is RedisStreams:
        return RedisStreams(topic, report, maxlen=options.maxlen)
    return kind(topic, report)


async def main(options: argparse.Namespace) -> None:
    if options.role == "history":
        await history.serve(
            options.db,
            options.host,
            options.port,
            options.exchange,
            options.queue,
            on_event=processes.report,
        )
        return
    policy = server.Policy(
        frozenset(options.allow_origin), options.max_messages_per_s, options.max_bytes_per_s
    )
    await server.serve(backend(options), options.host, options.http, policy, processes.report)


if __name__ == "__main__":
    arguments = parser().parse_args()
    cli.run(main(arguments), arguments.role, arguments.give_up_after)
