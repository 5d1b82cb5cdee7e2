"""Requests and replies on a one-way channel, as the book's samples write them: JSON objects.

    {"type": "request", "data": {"a": 1, "b": 2}, "id": "<request id>"}
    {"type": "response", "data": {"sum": 3}, "inReplyTo": "<request id>"}
    {"type": "error", "error": "b must be a number, not 'two'", "inReplyTo": "<request id>"}

The error reply is ours: a request that cannot be read or handled gets an answer, not
silence (its `inReplyTo` is null when not even the id could be read). Over a pipe each
object is one line; over ZeroMQ, one frame. Brokers carry the id and the return address
beside the body instead (AMQP properties, Redis stream fields), and the body is the data.
"""

import json
from typing import Any

from patterns.messages import MAX_BYTES, MalformedMessage


class BadRequest(ValueError):
    """A request that cannot be answered; the message is the error reply's text."""

    def __init__(self, reason: str, request_id: Any = None) -> None:
        super().__init__(reason)
        self.request_id = request_id if isinstance(request_id, str) else None


def dumps(value: Any) -> bytes:
    """Compact JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes | bytearray | memoryview) -> Any:
    """The JSON value in `raw`, or `MalformedMessage` saying why not: no other exception."""
    if len(raw) > MAX_BYTES:
        raise MalformedMessage(f"{len(raw)} bytes is over the {MAX_BYTES}-byte limit")
    try:
        return json.loads(bytes(raw), parse_constant=_not_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedMessage(f"not JSON: {error}") from None
    except RecursionError:
        raise MalformedMessage("not JSON this implementation can read: nested too deep") from None
    except MalformedMessage:
        raise
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise MalformedMessage(f"not JSON this implementation can read: {error}") from None


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have (and `dumps` refuses)."""
    raise MalformedMessage(f"not JSON: {constant} is not a JSON value")


def request(request_id: str, data: Any) -> bytes:
    return dumps({"type": "request", "data": data, "id": request_id})


def response(request_id: str | None, data: Any) -> bytes:
    return dumps({"type": "response", "data": data, "inReplyTo": request_id})


def error(request_id: str | None, reason: str) -> bytes:
    return dumps({"type": "error", "error": reason, "inReplyTo": request_id})


def read_request(raw: bytes) -> tuple[str, Any]:
    """(id, data) of a request; `BadRequest` (with the id, if it could be read) otherwise."""
    try:
        message = loads(raw)
    except MalformedMessage as problem:
        raise BadRequest(str(problem)) from None
    if not isinstance(message, dict):
        raise BadRequest(f"a request is a JSON object, not {type(message).__name__}")
    request_id = message.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise BadRequest(f"id must be a non-empty string, not {request_id!r:.80}")
    if message.get("type") != "request":
        raise BadRequest(f"type is {message.get('type')!r:.80}, not 'request'", request_id)
    return request_id, message.get("data")


def read_reply(raw: bytes) -> tuple[Any, Any, str | None]:
    """(inReplyTo, data, error text or None) of a reply; `MalformedMessage` otherwise."""
    message = loads(raw)
    if not isinstance(message, dict):
        raise MalformedMessage(f"a reply is a JSON object, not {type(message).__name__}")
    kind = message.get("type")
    if kind == "response":
        return message.get("inReplyTo"), message.get("data"), None
    if kind == "error":
        return message.get("inReplyTo"), None, str(message.get("error"))
    raise MalformedMessage(f"type is {kind!r:.80}, not 'response' or 'error'")


class Lines:
    """Bytes in, complete lines out; a line longer than `limit` comes out whole, to be refused,
    and its rest is skipped, so a peer that never sends a newline cannot fill the memory.
    Blank lines (whitespace only) carry no message and are left out."""

    def __init__(self, limit: int = MAX_BYTES) -> None:
        self.limit = limit
        self._partial = b""
        self._skipping = False  # inside the rest of an overlong line

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if self._skipping:
            if not lines:
                self._partial = b""
                return []
            lines.pop(0)
            self._skipping = False
        if len(self._partial) > self.limit:
            lines.append(self._partial)
            self._partial, self._skipping = b"", True
        return [line for line in lines if line.strip()]
