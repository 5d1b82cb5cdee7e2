import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patterns import messages
from patterns.messages import MalformedMessage, Message, decode


def test_the_three_kinds_round_trip_through_json() -> None:
    for make in (messages.command, messages.event, messages.document):
        original = make("sum", {"a": 1, "b": [2, 3]}, reply_to="replies")
        assert messages.decode(original.encode()) == original
        assert messages.decode(original.encode().decode()) == original


def test_reply_correlates_to_the_request() -> None:
    request = messages.command("sum", {"a": 1, "b": 2})
    answer = messages.reply(request, {"sum": 3})
    assert (answer.kind, answer.correlation_id, answer.type) == ("document", request.id, "sum")
    assert answer.id != request.id


def test_non_ascii_text_survives() -> None:
    original = messages.event("chat", "héllo, 世界")
    assert messages.decode(original.encode()).payload == "héllo, 世界"


def test_unknown_fields_are_ignored() -> None:
    fields = json.loads(messages.event("tick").encode())
    fields["added_by_a_newer_sender"] = True
    assert messages.decode(json.dumps(fields).encode()).type == "tick"


def valid() -> dict:
    return json.loads(messages.command("sum", 1).encode())


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xfe{}", "not UTF-8: invalid start byte at byte 0"),
        (b"{", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "a message is a JSON object, not list"),
        (b'"text"', "a message is a JSON object, not str"),
        (b"[" * 100_000, "nested too deep"),
        (b"x" * (messages.MAX_BYTES + 1), "over the 1048576-byte limit"),
    ],
)
def test_malformed_bytes_name_their_problem(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem.replace("[", r"\[")):
        messages.decode(data)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "query"}, "kind is 'query', not one of command, event, document"),
        ({"kind": None}, "kind is None"),
        ({"type": ""}, "type must be a non-empty string"),
        ({"type": 7}, "type must be a non-empty string"),
        ({"id": None}, "id must be a non-empty string"),
        ({"correlation_id": 5}, "correlation_id must be a string or null"),
        ({"reply_to": ["q"]}, "reply_to must be a string or null"),
        ({"sent_ns": "12"}, "sent_ns must be an integer"),
        ({"sent_ns": True}, "sent_ns must be an integer"),
        ({"sent_ns": 1.5}, "sent_ns must be an integer"),
    ],
)
def test_missing_or_mistyped_fields_name_the_field(change: dict, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        messages.decode(json.dumps(valid() | change))


def test_a_missing_field_is_named() -> None:
    fields = valid()
    del fields["sent_ns"]
    with pytest.raises(MalformedMessage, match="sent_ns must be an integer, not None"):
        messages.decode(json.dumps(fields))


def test_malformed_message_is_a_value_error_and_nothing_else_escapes() -> None:
    assert issubclass(MalformedMessage, ValueError)
    for junk in (b"\x00", b"null", b"1e999", b'{"kind": {}}', b"{}" * 3):
        with pytest.raises(MalformedMessage):
            messages.decode(junk)


def test_a_payload_that_is_not_json_is_refused_when_sending() -> None:
    with pytest.raises(ValueError, match="payload of 'x' is not JSON"):
        Message("event", "x", payload={1, 2}).encode()
    with pytest.raises(ValueError, match="not JSON"):
        Message("event", "x", payload=float("nan")).encode()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400)
    | st.text(max_size=400)
    | st.integers().map(lambda n: b'{"sent_ns": %d}' % n)
)
def test_no_bytes_make_decode_raise_anything_but_malformed(data: bytes | str) -> None:
    with contextlib.suppress(MalformedMessage):
        decode(data)


def test_an_integer_too_long_to_convert_is_malformed_not_a_crash() -> None:
    huge = b'{"kind": "event", "type": "x", "id": "1", "sent_ns": ' + b"9" * 5_000 + b"}"
    with pytest.raises(MalformedMessage, match="not JSON: Exceeds the limit"):
        decode(huge)
