"""What a replier answers, whatever carries the requests.

A handler takes a request's data and returns the reply's data, or an awaitable of it when
it answers later, so a replier answers at once where it can and spends a task only on the
requests that wait. `add` is the book's handler. `BadRequest` from a handler becomes an
error reply, and so does any other exception (logged with its traceback): the requester
hears about it at once, and the replier goes on with the next request. Told to stop
(SIGTERM), a replier takes no more requests and finishes those in hand, for up to
`GRACE_S`, so that stopping it (for a deploy, say) does not turn them into timeouts.

Nothing here knows a transport: `pipe`, `zeromq`, `amqp` and `redis_streams` call it.
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from patterns.reqrep import wire
from patterns.reqrep.wire import BadRequest

log = logging.getLogger(__name__)

Handler = Callable[[Any], Any]  # data -> reply data, or an awaitable of it
Answer = tuple[Any, str | None]  # (reply data, None), or (None, what went wrong)

MAX_DELAY_MS = 60_000
GRACE_S = 3.0  # told to stop, a replier finishes the requests in hand for this long at most


def add(data: Any) -> Any:
    """The book's replier: `{"sum": a + b}`, after `delay` milliseconds (0 if absent)."""
    if not isinstance(data, dict):
        raise BadRequest(f"a sum request is an object with a and b, not {type(data).__name__}")
    a, b, delay = data.get("a"), data.get("b"), data.get("delay", 0)
    for name, value in (("a", a), ("b", b), ("delay", delay)):
        if type(value) not in (int, float):  # bool is an int, and no number
            raise BadRequest(f"{name} must be a number, not {value!r:.40}")
    if not 0 <= delay <= MAX_DELAY_MS:
        raise BadRequest(f"delay must be 0 to {MAX_DELAY_MS} ms, not {delay}")
    total = {"sum": a + b}
    return after(delay / 1000, total) if delay else total


async def after(seconds: float, value: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


@dataclass
class ReplierCounts:
    """Every request a replier took, in exactly one of the first four counts."""

    answered: int = 0
    refused: int = 0  # error replies: unreadable requests, handler errors
    skipped: int = 0  # nothing to reply to: no return address, so no reply (logged)
    expired: int = 0  # requests whose requester had already given up, skipped
    undeliverable: int = 0  # replies sent that the transport could not route (requester gone)
    redelivered: int = 0  # requests taken over from a replier that died with them


def answer(handler: Handler, data: Any) -> Answer | Awaitable[Answer]:
    """What to reply to `data`: now, or an awaitable when the handler answers later."""
    try:
        result = handler(data)
    except Exception as problem:
        return None, refusal(problem)
    if inspect.isawaitable(result):
        return answer_later(result)
    return result, None


async def answer_later(result: Awaitable[Any]) -> Answer:
    try:
        return await result, None
    except Exception as problem:
        return None, refusal(problem)


def refusal(problem: Exception) -> str:
    if isinstance(problem, BadRequest):
        return str(problem)
    log.error("the handler failed", exc_info=problem)
    return f"the handler failed: {type(problem).__name__}: {problem}"


def respond(handler: Handler, raw: bytes, counts: ReplierCounts) -> bytes | Awaitable[bytes]:
    """The reply to one request in the book's envelope (pipe, ZeroMQ): now, or an awaitable.

    Whatever `raw` holds, the reply is an error reply at worst, never an exception.
    """
    try:
        request_id, data = wire.read_request(raw)
    except BadRequest as problem:
        counts.refused += 1
        return wire.error(problem.request_id, str(problem))
    result = answer(handler, data)
    if isinstance(result, tuple):
        return enveloped(request_id, result, counts)
    return enveloped_later(request_id, result, counts)


def enveloped(request_id: str | None, result: Answer, counts: ReplierCounts) -> bytes:
    """The reply to `request_id`: the data, or an error reply if there is none to send."""
    data, problem = result
    if problem is None:
        try:
            reply = wire.response(request_id, data)
        except (TypeError, ValueError) as error:
            problem = f"the reply is not JSON: {error}"
        else:
            counts.answered += 1
            return reply
    counts.refused += 1
    return wire.error(request_id, problem)


async def enveloped_later(
    request_id: str | None, result: Awaitable[Answer], counts: ReplierCounts
) -> bytes:
    return enveloped(request_id, await result, counts)
