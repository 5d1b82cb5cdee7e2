"""The book's requester: send its two sums at once, print each reply as it comes.

The first request is the slower one, so its reply comes second: the correlation
identifier, not the order of arrival, says which request a reply answers.
"""

import asyncio
from typing import Any

from patterns.reqrep.correlation import Requester, RequestFailed

BOOK_REQUESTS = [{"a": 1, "b": 2, "delay": 500}, {"a": 6, "b": 1, "delay": 100}]


async def ask(requester: Requester, requests: list[Any], timeout: float | None = None) -> list[str]:
    """Send all `requests` at once; print a line for each reply (or failure) as it comes."""
    printed: list[str] = []

    async def one(request: Any) -> None:
        try:
            reply = await requester.request(request, timeout)
        except RequestFailed as error:
            line = f"Failed: {error}"
        else:
            line = f"Reply: {describe(request)} = {describe(reply)}"
        print(line, flush=True)
        printed.append(line)

    await asyncio.gather(*(one(request) for request in requests))
    return printed


def describe(value: Any) -> str:
    """`a + b` for a sum request, the sum for its reply, and JSON-ish text for anything else."""
    if isinstance(value, dict) and value.keys() >= {"a", "b"}:
        return f"{value['a']} + {value['b']}"
    if isinstance(value, dict) and value.keys() == {"sum"}:
        return str(value["sum"])
    return repr(value)
