"""python -m patterns.reqrep replier|requester|load|lateness [options]

Request/reply from a terminal. Start a replier (on this machine or another one, pointed at
the broker with AMQP_URL / REDIS_URL, or bound to an address with ZeroMQ), then send it
the book's requests, or your own:

    python -m patterns.reqrep replier --transport amqp
    python -m patterns.reqrep requester --transport amqp '{"a": 2, "b": 3, "delay": 200}'

Over the pipe, the requester starts its replier itself (`replier --transport stdio`).
`python -m patterns.reqrep ROLE --help` lists a role's options. The defaults are the
book's names, so its Node.js samples can take either side. The requester prints each
reply as it comes and exits with 1 if any request failed; a replier prints its reports
("ready", then "result" when stopped) as JSON lines, except over stdio, where stdout
carries the replies.
"""

import argparse
import json
from typing import Any

from patterns import cli, processes
from patterns.reqrep import (
    FAST,
    TRANSPORTS,
    amqp,
    connect,
    load,
    pipe,
    redis_streams,
    redis_streams_fast,
    zeromq,
    zeromq_fast,
)
from patterns.reqrep.book import BOOK_REQUESTS, ask
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S
from patterns.reqrep.handler import add

REPLIERS = ("stdio", "zmq", "amqp", "redis")


def request(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be JSON, not {text!r} ({error})") from None


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def rates(text: str) -> list[float]:
    try:
        values = [float(rate) for rate in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"must be requests/s above 0, comma-separated: {text!r}")
    return values


def parser() -> cli.Parser:
    top = cli.Parser(
        prog="python -m patterns.reqrep",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roles = top.roles()
    replier = roles.add_parser("replier", help="answer the book's sum requests")
    replier.add_argument("--transport", choices=REPLIERS, default="stdio")
    replier.add_argument("--endpoint", default=zeromq.DEFAULT_ENDPOINT, help="zmq: bind here")
    replier.add_argument("--queue", default=amqp.REQUESTS_QUEUE, help="amqp: consume this queue")
    replier.add_argument(
        "--stream", default=redis_streams.REQUESTS_STREAM, help="redis: read this stream"
    )
    replier.add_argument(
        "--prefetch", type=count, default=amqp.PREFETCH, help="amqp, redis: requests at once"
    )
    replier.add_argument(
        "--fast", action="store_true", help="zmq, redis: the tuned replier (*_fast.py)"
    )
    replier.add_argument(
        "--claim-after",
        type=cli.positive,
        default=redis_streams.CLAIM_AFTER_S,
        help="redis: take over a dead replier's requests idle this long, in s",
    )

    requester = roles.add_parser("requester", help="send requests, print each reply")
    requester.add_argument(
        "requests", nargs="*", type=request, help='JSON, e.g. \'{"a": 1, "b": 2, "delay": 500}\''
    )
    load_role = roles.add_parser("load", help="offer requests at fixed rates, report latency")
    for role in (requester, load_role):
        role.add_argument("--transport", choices=TRANSPORTS, default="pipe")
        role.add_argument(
            "--to",
            help="the replier's endpoint (zmq: or several, comma-separated), queue or stream "
            "(default: the book's)",
        )
        role.add_argument(
            "--timeout", type=cli.positive, default=DEFAULT_TIMEOUT_S, help="per request, s"
        )
    load_role.add_argument("--rates", type=rates, default=[100, 1_000, 5_000], help="per s")
    load_role.add_argument("--seconds", type=cli.positive, default=3.0, help="per rate")
    load_role.add_argument("--pacer", choices=tuple(load.PACERS), default="timerfd")
    load_role.add_argument(
        "--max-pending", type=count, default=1_000, help="more at once are shed, not queued"
    )
    load_role.add_argument("--replier-pid", type=int, help="to count the replier's CPU")
    load_role.add_argument(
        "--fast", action="store_true", help="zmq, redis: the tuned requester (*_fast.py)"
    )

    lateness = roles.add_parser("lateness", help="how late each pacer hands requests over")
    lateness.add_argument("--rate", type=cli.positive, default=1_000.0, help="per s")
    lateness.add_argument("--seconds", type=cli.positive, default=3.0)
    for role in (replier, requester, load_role, lateness):
        cli.add_give_up(role)
    return top


async def serve(options: argparse.Namespace) -> None:
    report = processes.report
    if options.transport == "stdio":  # stdout carries the replies: no reports
        await pipe.serve(add)
    elif options.transport == "zmq":
        module = zeromq_fast if options.fast else zeromq
        await module.serve(add, options.endpoint, on_event=report)
    elif options.transport == "amqp":
        await amqp.serve(add, options.queue, options.prefetch, on_event=report)
    else:
        module = redis_streams_fast if options.fast else redis_streams
        await module.serve(
            add, options.stream, options.prefetch, options.claim_after, on_event=report
        )


async def send(options: argparse.Namespace) -> None:
    requests = options.requests or BOOK_REQUESTS
    async with connect(options.transport, options.to, options.timeout) as requester:
        printed = await ask(requester, requests)
    failures = [line.removeprefix("Failed: ") for line in printed if line.startswith("Failed: ")]
    if failures:
        raise cli.Failed(f"{len(failures)} of {len(requests)} requests failed; {failures[0]}")


async def main(options: argparse.Namespace) -> None:
    if options.role == "replier":
        await serve(options)
    elif options.role == "requester":
        await send(options)
    elif options.role == "load":
        await load.offer_steps(
            options.transport,
            options.to,
            options.rates,
            options.seconds,
            options.timeout,
            options.pacer,
            options.max_pending,
            options.replier_pid,
            options.fast,
            on_event=processes.report,
        )
    else:
        await load.pacer_lateness(options.rate, options.seconds, on_event=processes.report)


if __name__ == "__main__":
    top = parser()
    arguments = top.parse_args()
    if getattr(arguments, "fast", False) and arguments.transport not in FAST:
        top.error(f"--fast: {arguments.transport} has no tuned variant; {' and '.join(FAST)} do")
    cli.run(main(arguments), arguments.role, arguments.give_up_after)
