"""The book's requester: send sums, print each reply when it comes (out of order if faster).

python -m patterns.reqrep.requester --transport pipe
python -m patterns.reqrep.requester --transport zmq --to tcp://127.0.0.1:5030
python -m patterns.reqrep.requester --transport amqp '{"a": 2, "b": 3, "delay": 200}'
"""

import argparse
import asyncio
import json
from typing import Any

from patterns import processes
from patterns.reqrep import TRANSPORTS, Requester, RequestFailed, connect

BOOK_REQUESTS = [{"a": 1, "b": 2, "delay": 500}, {"a": 6, "b": 1, "delay": 100}]


async def ask(requester: Requester, requests: list[Any], timeout: float | None = None) -> list[str]:
    """Send all `requests` at once; print a line for each reply as it arrives."""
    printed: list[str] = []

    async def one(request: Any) -> None:
        try:
            reply = await requester.request(request, timeout)
        except RequestFailed as error:
            line = f"Failed: {error}"
        else:
            line = f"Reply: {request['a']} + {request['b']} = {reply['sum']}"
        print(line)
        printed.append(line)

    await asyncio.gather(*(one(request) for request in requests))
    return printed


async def requester_main(options: argparse.Namespace) -> None:
    requests = [json.loads(text) for text in options.requests] or BOOK_REQUESTS
    async with connect(options.transport, options.to, options.timeout) as connected:
        await ask(connected, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", nargs="*", help='JSON, e.g. \'{"a": 1, "b": 2, "delay": 500}\'')
    parser.add_argument("--transport", choices=TRANSPORTS, default="pipe")
    parser.add_argument("--to", help="the replier's endpoint, queue or stream (default: WIRE's)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, in seconds")
    options = parser.parse_args()
    processes.run(requester_main(options))


if __name__ == "__main__":
    main()
