"""The envelope: one message type, three intents, JSON on the wire.

The chapter distinguishes three kinds of message:

* a **command** asks the receiver to do something (`{"kind": "command", "type": "sum"}`);
* an **event** says that something happened (`"kind": "event"`), for whoever cares;
* a **document** carries data, typically the answer to a command (`"kind": "document"`).

They share one envelope: an id, the correlation id of the message it answers, the address
to reply to, the sender's timestamp and a JSON payload. On the wire it is one UTF-8 JSON
object. Decoding is strict about what it needs and tolerant of what it does not know:
unknown fields are ignored (a newer sender can add some), while a missing or mistyped
field raises `MalformedMessage`, which names the problem. No other exception escapes
`decode`, so a consumer needs exactly one `except` to set a bad message aside.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["command", "event", "document"]
KINDS: tuple[Kind, ...] = ("command", "event", "document")
MAX_BYTES = 1 << 20  # decode refuses larger messages before parsing them


class MalformedMessage(ValueError):
    """The bytes are not a valid message; `str(error)` says what is wrong."""


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    type: str
    payload: Any = None
    id: str = field(default_factory=new_id)
    correlation_id: str | None = None
    reply_to: str | None = None
    # time.perf_counter_ns() of the sender: monotonic and shared by all processes of one
    # host (Linux CLOCK_MONOTONIC), so a receiver on the same host can compute latency.
    sent_ns: int = field(default_factory=time.perf_counter_ns)

    def encode(self) -> bytes:
        fields = {
            "kind": self.kind,
            "type": self.type,
            "id": self.id,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "sent_ns": self.sent_ns,
            "payload": self.payload,
        }
        try:
            return json.dumps(
                fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as error:
            raise ValueError(f"the payload of {self.type!r} is not JSON: {error}") from None


def command(type: str, payload: Any = None, **fields: Any) -> Message:
    return Message("command", type, payload, **fields)


def event(type: str, payload: Any = None, **fields: Any) -> Message:
    return Message("event", type, payload, **fields)


def document(type: str, payload: Any = None, **fields: Any) -> Message:
    return Message("document", type, payload, **fields)


def reply(to: Message, payload: Any = None) -> Message:
    """The document that answers `to`: same type, correlated to its id."""
    return document(to.type, payload, correlation_id=to.id)


def decode(data: bytes | bytearray | memoryview | str) -> Message:
    """The message in `data`, or `MalformedMessage` naming what is wrong with it."""
    if isinstance(data, str):
        text = data
        if len(text) > MAX_BYTES:
            raise MalformedMessage(f"{len(text)} characters is over the {MAX_BYTES}-byte limit")
    else:
        if len(data) > MAX_BYTES:
            raise MalformedMessage(f"{len(data)} bytes is over the {MAX_BYTES}-byte limit")
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError as error:
            raise MalformedMessage(f"not UTF-8: {error.reason} at byte {error.start}") from None
    try:
        fields = json.loads(text)
    except RecursionError:
        raise MalformedMessage("not JSON this implementation can read: nested too deep") from None
    except Exception as error:  # JSONDecodeError, or a ValueError for a huge integer, ...
        raise MalformedMessage(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage(f"a message is a JSON object, not {type(fields).__name__}")
    if fields.get("kind") not in KINDS:
        raise MalformedMessage(f"kind is {fields.get('kind')!r}, not one of {', '.join(KINDS)}")
    for name in ("type", "id"):
        if not isinstance(fields.get(name), str) or not fields[name]:
            raise MalformedMessage(f"{name} must be a non-empty string, not {fields.get(name)!r}")
    for name in ("correlation_id", "reply_to"):
        if not isinstance(fields.get(name), str | None):
            raise MalformedMessage(f"{name} must be a string or null, not {fields[name]!r}")
    sent_ns = fields.get("sent_ns")
    if type(sent_ns) is not int:  # bool is an int subclass; refuse it too
        raise MalformedMessage(f"sent_ns must be an integer, not {sent_ns!r}")
    return Message(
        kind=fields["kind"],
        type=fields["type"],
        payload=fields.get("payload"),
        id=fields["id"],
        correlation_id=fields.get("correlation_id"),
        reply_to=fields.get("reply_to"),
        sent_ns=sent_ns,
    )
