"""The correlation identifier: many requests in flight on one channel, each reply matched by id.

A requester gives every request an id and keeps a future for it in a dict, the
*correlation map*. The reply carries the id back (`inReplyTo`, or AMQP's
`correlation_id`), and the requester resolves the future it finds under that id, in
whatever order replies come. The rules that make it safe to copy:

* every request has a timeout, covering the send as well as the wait, so a full pipe or a
  replier that never answers cannot block a caller forever: `RequestTimeout` names the
  request id and the timeout;
* an entry lives exactly as long as the call that made it (`finally` removes it, whether
  the call was answered, timed out, failed or was cancelled), so the map cannot leak;
* a reply that matches no waiting request is counted and dropped where it arrives, never
  raised there: `late` if it answers a request of ours that stopped waiting (timed out,
  or already answered), `unknown` if it is not ours at all. Ids are a random prefix and
  a counter, so telling the two apart needs no memory of past requests;
* when the channel breaks (the replier exits, the connection drops), every pending
  request fails at once with `ChannelClosed`, instead of each waiting for its timeout;
* at most `max_pending` requests wait at once; one more fails at once with `Overloaded`,
  so an overloaded requester sheds load instead of queueing without bound.

Transports subclass `Requester`: they send (`_send`) and hand what arrives to `_settle`.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_PENDING = 10_000


class RequestFailed(Exception):
    """A request got no reply; `request_id` says which."""

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class RequestTimeout(RequestFailed, TimeoutError):
    def __init__(self, request_id: str, timeout: float, why: str = "") -> None:
        because = f": {why}" if why else ""
        super().__init__(
            request_id, f"no reply to request {request_id} within {timeout:g} s{because}"
        )
        self.timeout = timeout


class ChannelClosed(RequestFailed, ConnectionError):
    """The channel to the replier is gone, so no reply can come: `reason` says why."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(request_id, f"request {request_id} failed: {reason}")
        self.reason = reason


class Overloaded(RequestFailed):
    """Refused before sending: `max_pending` requests are already waiting for replies."""

    def __init__(self, request_id: str, limit: int) -> None:
        super().__init__(request_id, f"request {request_id} refused: {limit:,} are pending")
        self.limit = limit


class ReplyError(RequestFailed):
    """The replier answered with an error (a request it could not read or handle)."""

    def __init__(self, request_id: str, error: str) -> None:
        super().__init__(request_id, f"the replier refused request {request_id}: {error}")
        self.error = error


@dataclass
class Counts:
    sent: int = 0
    answered: int = 0
    refused: int = 0  # answered with an error
    timed_out: int = 0
    failed: int = 0  # the channel closed while they waited
    overloaded: int = 0  # refused at once: max_pending were waiting
    late: int = 0  # replies to a request of ours that no longer waited
    unknown: int = 0  # replies to no request of ours
    malformed: int = 0  # replies that could not be read at all


class Requester:
    """`await request(data, timeout)` -> the reply's data; the same API over every transport."""

    transport = "abstract"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.max_pending = DEFAULT_MAX_PENDING
        self.counts = Counts()
        self._prefix = uuid.uuid4().hex
        self._issued = 0
        self._waiting: dict[str, asyncio.Future] = {}
        self._closed: str | None = None  # why the channel is gone, once it is

    def __len__(self) -> int:
        """Requests waiting for their reply: the size of the correlation map."""
        return len(self._waiting)

    def stats(self) -> dict[str, int]:
        return asdict(self.counts) | {"pending": len(self._waiting)}

    async def request(self, data: Any, timeout: float | None = None) -> Any:
        """Send `data`, wait for the matching reply's data; `RequestFailed` if none comes."""
        timeout = self.timeout if timeout is None else timeout
        request_id = f"{self._prefix}-{self._issued}"
        self._issued += 1
        if self._closed is not None:
            self.counts.failed += 1
            raise ChannelClosed(request_id, self._closed)
        if len(self._waiting) >= self.max_pending:
            self.counts.overloaded += 1
            raise Overloaded(request_id, self.max_pending)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[request_id] = future
        # one timer per request: it fails the future unless a reply resolved it first
        expiry = loop.call_later(timeout, _expire, future, request_id, timeout)
        try:
            await self._send(request_id, data, timeout, future)
            self.counts.sent += 1
            return await future
        except RequestTimeout:
            self.counts.timed_out += 1
            raise
        except ChannelClosed:
            self.counts.failed += 1
            raise
        finally:
            expiry.cancel()
            del self._waiting[request_id]
            if future.done() and not future.cancelled():
                future.exception()  # seen, even if a cancellation got here first

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        """Hand the request to the channel; wait only if it is full, and never past `future`."""
        raise NotImplementedError

    @staticmethod
    async def _wait_to_send(ready: Awaitable[Any], future: asyncio.Future) -> Any:
        """Await `ready` (a connection, room to send, the send itself) unless the request ends
        first (timed out, channel closed), which cancels it; `ready`'s result."""
        waiter = asyncio.ensure_future(ready)
        if not waiter.done():  # the usual case needs no wait at all
            try:
                await asyncio.wait([waiter, future], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if future.done():
            future.result()  # raises why it ended
        return None if waiter.cancelled() else waiter.result()

    def _settle(self, request_id: Any, data: Any = None, error: str | None = None) -> None:
        """Resolve the request waiting under `request_id`; count a reply that matches none."""
        future = self._waiting.get(request_id) if isinstance(request_id, str) else None
        if future is None or future.done():
            if self._is_ours(request_id):
                self.counts.late += 1
                log.debug("dropped a late reply to %s", request_id)
            else:
                self.counts.unknown += 1
                log.warning("dropped a reply to an unknown request id %.80r", request_id)
        elif error is None:
            self.counts.answered += 1
            future.set_result(data)
        else:
            self.counts.refused += 1
            future.set_exception(ReplyError(request_id, error))

    def _is_ours(self, request_id: Any) -> bool:
        if not isinstance(request_id, str):
            return False
        prefix, _, number = request_id.rpartition("-")
        return prefix == self._prefix and number.isdigit() and int(number) < self._issued

    def _malformed(self, raw: bytes, problem: str) -> None:
        self.counts.malformed += 1
        log.warning("dropped a reply that cannot be read (%s): %.80r", problem, raw)

    def _fail_pending(self, reason: str) -> None:
        """Fail every request waiting now: their replies cannot come any more."""
        for request_id, future in self._waiting.items():
            if not future.done():
                future.set_exception(ChannelClosed(request_id, reason))

    def _close(self, reason: str) -> None:
        """The channel is gone for good: fail pending requests now, and later ones at once."""
        if self._closed is None:
            self._closed = reason
        self._fail_pending(reason)

    @property
    def closed(self) -> str | None:
        """Why the channel is gone, or None while it works."""
        return self._closed


def _expire(future: asyncio.Future, request_id: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(request_id, timeout))
