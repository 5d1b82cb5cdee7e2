"""The measured message: who sent it, its sequence number, and when it was due.

    b"p0 17 355003198221 xxxxxxxx..."

ASCII text, so it travels unchanged as a ZeroMQ frame, a Redis value, an AMQP body or a
WebSocket text frame, and a reader can look at it. `read_probe` raises `MalformedMessage`
for anything else, so a stray message on a benchmark channel is counted, not a crash.
"""

from patterns.messages import MalformedMessage


def probe(producer: str, seq: int, sent_ns: int, size: int = 0) -> bytes:
    """The probe bytes, padded with `x` to at least `size` bytes."""
    head = f"{producer} {seq} {sent_ns}".encode()
    return head if len(head) + 1 >= size else head + b" " + b"x" * (size - len(head) - 1)


def read_probe(data: bytes | bytearray | memoryview | str) -> tuple[str, int, int]:
    """(producer, seq, sent_ns) of a probe."""
    if isinstance(data, str):
        data = data.encode()
    fields = bytes(data).split(b" ", 3)
    try:
        producer, seq, sent_ns = fields[0].decode("ascii"), int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        raise MalformedMessage(f"not a probe: {bytes(data)[:40]!r}") from None
    return producer, seq, sent_ns


def end_marker(producer: str, sent: int) -> bytes:
    """Sent after a producer's last probe: how many it numbered, so the ledger can count."""
    return f"END {producer} {sent}".encode()


def read_end(data: bytes) -> tuple[str, int] | None:
    """(producer, sent) if `data` is an end marker, else None."""
    if not data.startswith(b"END "):
        return None
    try:
        _, producer, sent = data.decode("ascii").split(" ")
        return producer, int(sent)
    except ValueError:
        raise MalformedMessage(f"not an end marker: {data[:40]!r}") from None
