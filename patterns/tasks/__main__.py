"""python -m patterns.tasks producer|worker|collector --transport zmq|amqp|streams [options]

The hashsum cracker from a terminal: run a collector, a few workers (on this machine or
others, pointed at the broker with AMQP_URL / REDIS_URL, or at the producer's and the
collector's addresses with ZeroMQ), then a producer:

    python -m patterns.tasks collector --transport amqp
    python -m patterns.tasks worker --transport amqp --name w1
    python -m patterns.tasks producer --transport amqp --max-length 4 --word node

Each prints JSON lines (its reports: "ready", "stats", "found", "result") on stdout and
its log on stderr; `python -m patterns.tasks ROLE --help` lists a role's options. The
defaults are the book's names and ports, so its Node.js samples can take either side.
The collector exits with 1 if the job is not complete (it names what is missing).
"""

import argparse
import os
import socket
from dataclasses import replace

from patterns import cli, processes
from patterns.tasks import amqp, streams, wire, zeromq
from patterns.tasks.collect import IDLE_S, INTERVAL_S
from patterns.tasks.job import BATCH_SIZE, DEFAULTS, TRANSPORTS, plan
from patterns.tasks.space import ALPHABET
from patterns.tasks.work import BUDGET_S, MAX_ATTEMPTS, Worker

MODULES = {"zmq": zeromq, "amqp": amqp, "streams": streams}


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def sha1(text: str) -> str:
    if not wire.HEX_SHA1.fullmatch(text.lower()):
        raise argparse.ArgumentTypeError(f"must be 40 hex digits, not {text!r}")
    return text.lower()


def alphabet(text: str) -> str:
    if not 2 <= len(text) <= wire.MAX_ALPHABET or len(set(text)) != len(text):
        raise argparse.ArgumentTypeError(
            f"must be 2 to {wire.MAX_ALPHABET} distinct letters, not {text!r}"
        )
    return text


def parser() -> cli.Parser:
    top = cli.Parser(
        prog="python -m patterns.tasks",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roles = top.roles()
    producer = roles.add_parser("producer", help="cut the search space into tasks, send them")
    worker = roles.add_parser("worker", help="hash tasks, report each (one per core)")
    collector = roles.add_parser("collector", help="gather reports, announce the word")
    for role in (producer, worker, collector):
        role.add_argument("--transport", choices=TRANSPORTS, default="zmq")
        named = role.add_argument_group("channels (default: the book's, for the transport)")
        for name in ("tasks", "results", "control", "reports", "dead", "group"):
            named.add_argument(f"--{name}", metavar="NAME")
        cli.add_give_up(role)
    target = producer.add_mutually_exclusive_group(required=True)
    target.add_argument("--hash", type=sha1, help="the SHA-1 to crack, 40 hex digits")
    target.add_argument("--word", help="or a word, whose SHA-1 is cracked")
    producer.add_argument("--max-length", type=count, default=4, help="longest word tried")
    producer.add_argument("--alphabet", type=alphabet, default=ALPHABET)
    producer.add_argument("--batch-size", type=count, default=BATCH_SIZE)
    producer.add_argument("--window", type=count, default=amqp.WINDOW, help="amqp, streams")
    producer.add_argument("--workers", type=count, default=1, help="zmq: wait for this many")
    for role in (producer, worker):
        role.add_argument(
            "--hwm",
            type=int,
            default=zeromq.HWM,
            help="zmq: tasks queued per worker connection (0: ZeroMQ's defaults, the book's)",
        )
    worker.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    worker.add_argument("--prefetch", type=count, default=amqp.PREFETCH, help="amqp, streams")
    worker.add_argument(
        "--claim-idle", type=float, default=streams.CLAIM_IDLE_S, help="streams: seconds"
    )
    worker.add_argument("--max-attempts", type=count, default=MAX_ATTEMPTS)
    worker.add_argument("--budget", type=cli.positive, default=BUDGET_S, help="s per task")
    worker.add_argument("--exit-after", type=count, help="stop after this many tasks")
    collector.add_argument(
        "--idle-timeout",
        type=cli.positive,
        default=IDLE_S,
        help="give up after this many s without a report while tasks are outstanding",
    )
    collector.add_argument(
        "--interval", type=cli.positive, default=INTERVAL_S, help="s between stats reports"
    )
    return top


async def main(options: argparse.Namespace) -> None:
    defaults = DEFAULTS[options.transport]
    channels = replace(
        defaults, **{n: getattr(options, n) or getattr(defaults, n) for n in vars(defaults)}
    )
    module, report = MODULES[options.transport], processes.report
    if options.role == "producer":
        search_hash = options.hash or wire.sha1_hex(options.word)
        job, tasks = plan(search_hash, options.max_length, options.alphabet, options.batch_size)
        extra = (
            {"workers": options.workers, "hwm": options.hwm}
            if module is zeromq
            else {"window": options.window}
        )
        await module.producer(channels, job, tasks, on_event=report, **extra)
    elif options.role == "worker":
        work = Worker(options.name, options.max_attempts, options.budget)
        extra = {"hwm": options.hwm} if module is zeromq else {"prefetch": options.prefetch}
        if module is streams:
            extra["claim_idle"] = options.claim_idle
        await module.worker(channels, work, exit_after=options.exit_after, on_event=report, **extra)
    else:
        result = await module.collector(
            channels, idle_timeout=options.idle_timeout, interval=options.interval, on_event=report
        )
        report("result", **result)
        if not result["complete"]:
            raise cli.Failed(
                f"job {result['job']} incomplete: {result['missing']:,} of {result['tasks']:,} "
                f"tasks missing ({result['gave_up'] or 'no job was announced'})"
            )


if __name__ == "__main__":
    arguments = parser().parse_args()
    cli.run(main(arguments), arguments.role, arguments.give_up_after)
