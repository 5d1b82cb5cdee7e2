"""python -m patterns.tasks producer|worker|collector --transport zmq|amqp|streams [options]

The hashsum cracker from a terminal: run a collector, a few workers (on this machine or
others, pointed at the broker with AMQP_URL / REDIS_URL, or at the producer's and the
collector's addresses with ZeroMQ), then a producer:

    python -m patterns.tasks collector --transport amqp
    python -m patterns.tasks worker --transport amqp --name w1
    python -m patterns.tasks producer --transport amqp --max-length 4 \\
        --hash f8e966d1e207d02c44511a58dccff2f5429e9a3b

Each prints JSON lines (its reports: "ready", "stats", "found", "result") on stdout and
its log on stderr. The defaults are the book's names and ports, so its Node.js samples
can take either side.
"""

import argparse
import importlib
import logging
import os
import socket

from patterns import processes
from patterns.tasks import wire
from patterns.tasks.job import BATCH_SIZE, DEFAULTS, TRANSPORTS
from patterns.tasks.space import ALPHABET
from patterns.tasks.work import MAX_ATTEMPTS
from patterns.tasks.zeromq import HWM

MODULES = {"zmq": "zeromq", "amqp": "amqp", "streams": "streams"}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m patterns.tasks",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", choices=("producer", "worker", "collector"))
    parser.add_argument("--transport", choices=TRANSPORTS, default="zmq")
    channels = parser.add_argument_group("channels (default: the book's, for the transport)")
    for name in ("tasks", "results", "control", "dead", "group"):
        channels.add_argument(f"--{name}")
    job = parser.add_argument_group("producer")
    target = job.add_mutually_exclusive_group()
    target.add_argument("--hash", help="the SHA-1 to crack, 40 hex digits")
    target.add_argument("--word", help="or a word, whose SHA-1 is cracked")
    job.add_argument("--max-length", type=int, default=4)
    job.add_argument("--alphabet", default=ALPHABET)
    job.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    job.add_argument("--workers", type=int, default=1, help="zmq: wait for this many workers")
    job.add_argument(
        "--hwm",
        type=int,
        default=HWM,
        help="zmq, producer and worker: tasks queued per worker connection, with the smallest"
        " socket buffers (0: ZeroMQ's defaults, 1,000 and the kernel's buffers, as in the book)",
    )
    job.add_argument(
        "--window", type=int, default=1_000, help="amqp, streams: most tasks waiting at once"
    )
    work = parser.add_argument_group("worker")
    work.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    work.add_argument(
        "--prefetch", type=int, default=10, help="amqp: unacked tasks held; streams: read at once"
    )
    work.add_argument(
        "--claim-idle", type=float, default=10.0, help="streams: reclaim tasks idle this many s"
    )
    work.add_argument("--max-attempts", type=int, default=MAX_ATTEMPTS)
    work.add_argument("--exit-after", type=int, help="stop after this many tasks")
    collector = parser.add_argument_group("collector")
    collector.add_argument(
        "--idle-timeout", type=float, help="give up after this many s without a result"
    )
    collector.add_argument("--interval", type=float, default=0.25, help="s between stats")
    return parser


def main() -> None:
    options = parser().parse_args()
    for name, default in vars(DEFAULTS[options.transport]).items():
        if getattr(options, name) is None:
            setattr(options, name, default)
    if options.role == "producer":
        if options.word is None and options.hash is None:
            parser().error("the producer needs --hash or --word")
        options.hash = options.hash or wire.sha1_hex(options.word)
    if options.idle_timeout is None and options.transport == "zmq":
        options.idle_timeout = 10.0  # PUSH/PULL cannot tell a slow job from lost tasks
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {options.role} %(levelname)s %(message)s",
    )
    module = importlib.import_module(f"patterns.tasks.{MODULES[options.transport]}")
    processes.run(getattr(module, options.role)(options))


if __name__ == "__main__":
    main()
