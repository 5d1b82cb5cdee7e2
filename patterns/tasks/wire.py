"""What travels: the book's tasks and results, and the reports that account for a job.

A task is the book's JSON object, unchanged, so the book's Node.js producers feed our
workers and ours feed theirs (docs/wire.md):

    {"searchHash": "f8e9...9a3b", "alphabet": "ab...z", "batchStart": 1, "batchEnd": 10000}

A found word is the book's text `Found: node`, on the results channel. Everything else is
ours: JSON objects with a "type", on a reports channel of their own, so a book collector
on the results channel sees only what it expects:

* `job`: the producer announces a job (its id, how many tasks) before its first task;
* `sent`: the producer says how many tasks it sent in the end (fewer if the job stopped early);
* `done`: a worker finished a task (hashed it, or skipped it because the word was found);
* `dead`: a worker set a task aside (a dead letter) and says why;
* `cracked`: the collector's notice, on the control channel, that a job's word is found.

Our producer adds `"job": <id>` to each task; a worker echoes it in its reports, so a
collector tells this job's reports from leftovers of another.

Decoding is where bad input stops. `decode_task` and `decode_report` raise `MalformedTask`
or `MalformedMessage` for *anything* wrong with the bytes, whatever the parser raised
(a 5,000-digit integer makes `json.loads` raise a plain ValueError), and they check the
bounds that make a task finite before any work starts: an alphabet of 2 to `MAX_ALPHABET`
distinct letters, at most `MAX_BATCH` candidates, words of at most `MAX_WORD_LENGTH`.
"""

import functools
import hashlib
import json
import re
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

from patterns.messages import MalformedMessage
from patterns.tasks.space import search_space

FOUND_PREFIX = "Found: "
MAX_BYTES = 4_096  # a task or a report is a few hundred bytes; longer is refused unread
MAX_BATCH = 10_000_000  # candidates per task: seconds of hashing, not hours
MAX_WORD_LENGTH = 16  # the longest candidate a task may name
MAX_ALPHABET = 256
HEX_SHA1 = re.compile(r"[0-9a-f]{40}")


class MalformedTask(MalformedMessage):
    """Not a task, or one out of bounds; `str(error)` says why (the dead letter's reason)."""


@dataclass(slots=True)
class Task:
    search_hash: str
    alphabet: str
    batch_start: int
    batch_end: int
    job: str | None = None

    @property
    def candidates(self) -> int:
        return max(0, self.batch_end - self.batch_start + 1)


def dumps(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def encode_task(task: Task) -> bytes:
    fields: dict[str, Any] = {
        "searchHash": task.search_hash,
        "alphabet": task.alphabet,
        "batchStart": task.batch_start,
        "batchEnd": task.batch_end,
    }
    if task.job is not None:
        fields["job"] = task.job
    return dumps(fields)


def _object(data: bytes | str) -> dict[str, Any]:
    """The JSON object in `data`, or MalformedMessage whatever went wrong."""
    if len(data) > MAX_BYTES:
        raise MalformedMessage(f"{len(data):,} bytes, over the {MAX_BYTES:,}-byte limit")
    try:  # UTF-8 (docs/wire.md): decoded here, else json.loads would guess the encoding
        value = json.loads(data.decode() if isinstance(data, bytes | bytearray) else data)
    except Exception as error:  # UnicodeDecodeError, JSONDecodeError, and ValueError for
        raise MalformedMessage(f"not JSON: {error}") from None  # a huge integer, and more
    if type(value) is not dict:
        raise MalformedMessage(f"a JSON object is expected, not {type(value).__name__}")
    return value


def decode_task(data: bytes | str) -> Task:
    """The task in `data`, or `MalformedTask` naming the first problem found. Whatever
    goes wrong in decoding, even a failure no check foresaw, is bad input, never a crash."""
    try:
        return _task(_object(data))
    except MalformedTask:
        raise
    except MalformedMessage as error:
        raise MalformedTask(str(error)) from None
    except Exception as error:
        raise MalformedTask(f"unreadable task: {type(error).__name__}: {error}") from None


def _task(fields: dict[str, Any]) -> Task:
    try:
        search_hash, alphabet = fields["searchHash"], fields["alphabet"]
        start, end = fields["batchStart"], fields["batchEnd"]
    except KeyError as error:
        raise MalformedTask(f"missing field {error.args[0]}") from None
    if type(search_hash) is not str or not HEX_SHA1.fullmatch(search_hash.lower()):
        raise MalformedTask(f"searchHash must be 40 hex digits, not {search_hash!r:.60}")
    if type(alphabet) is not str or not 2 <= len(alphabet) <= MAX_ALPHABET:
        raise MalformedTask(f"alphabet must be 2 to {MAX_ALPHABET} letters, not {alphabet!r:.60}")
    if len(set(alphabet)) != len(alphabet):
        raise MalformedTask(f"alphabet must be distinct letters, not {alphabet!r:.60}")
    for name, value in (("batchStart", start), ("batchEnd", end)):
        if type(value) is not int:  # bool is an int subclass: refuse it too
            raise MalformedTask(f"{name} must be an integer, not {value!r:.60}")
    if start < 1 or end < start - 1:  # end == start - 1 is an empty batch
        raise MalformedTask(f"batch {start}..{end} is not a range of indexes from 1")
    if end - start + 1 > MAX_BATCH:
        raise MalformedTask(f"batch of {end - start + 1:,} candidates is over {MAX_BATCH:,}")
    if end > longest(len(alphabet)):
        raise MalformedTask(f"batch {start}..{end} names words over {MAX_WORD_LENGTH} letters")
    job = fields.get("job")
    if job is not None and (type(job) is not str or len(job) > 100):
        raise MalformedTask(f"job must be a string of at most 100 characters, not {job!r:.60}")
    return Task(search_hash.lower(), alphabet, start, end, job)


@functools.cache
def longest(letters: int) -> int:
    """The last index a task may name: words of up to MAX_WORD_LENGTH letters."""
    return search_space(letters, MAX_WORD_LENGTH)


def found(word: str) -> bytes:
    """The book's result text."""
    return f"{FOUND_PREFIX}{word}".encode()


def found_word(data: bytes) -> str | None:
    """The word of a `Found: <word>` result, or None if `data` is not one."""
    text = data.decode(errors="replace")
    return text[len(FOUND_PREFIX) :] if text.startswith(FOUND_PREFIX) else None


def sha1_hex(word: str) -> str:
    return hashlib.sha1(word.encode()).hexdigest()


# ---- our reports ------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    """A producer's announcement: the collector learns what to wait for."""

    job: str
    searchHash: str
    alphabet: str
    maxLength: int
    batchSize: int
    tasks: int
    started: float  # time.time() at the producer: comparable across hosts, roughly
    type: str = "job"


@dataclass(slots=True)
class Sent:
    """The producer's last word: how many tasks it sent (fewer if the job stopped early)."""

    job: str
    tasks: int
    type: str = "sent"


@dataclass(slots=True)
class Done:
    """A worker finished a task: `hashed` candidates, or skipped it (the word was found)."""

    worker: str
    job: str | None
    searchHash: str
    batchStart: int
    batchEnd: int
    hashed: int
    found: str | None = None
    skipped: bool = False
    attempts: int = 1  # which delivery of the task this was: > 1 after a redelivery
    type: str = "done"


@dataclass(slots=True)
class Dead:
    """A worker set a task aside: why, and after how many deliveries."""

    worker: str
    reason: str
    attempts: int
    job: str | None = None
    searchHash: str | None = None
    batchStart: int | None = None
    type: str = "dead"


@dataclass(slots=True)
class Cracked:
    """The collector's notice: the word of this hash is found, skip what is left of it."""

    searchHash: str
    word: str
    job: str | None = None
    type: str = "cracked"


Report = Job | Sent | Done | Dead | Cracked
REPORTS: dict[str, type] = {
    "job": Job,
    "sent": Sent,
    "done": Done,
    "dead": Dead,
    "cracked": Cracked,
}


def encode(report: Report) -> bytes:
    return dumps({name: getattr(report, name) for name in report.__dataclass_fields__})


@functools.cache
def _schema(kind: type) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    """Per field of a report: its name, the exact types it admits (no bool for an int; an
    int for a float) and whether it may be left out."""
    schema = []
    for field in fields(kind):
        if field.name != "type":
            admitted = typing.get_args(field.type) or (field.type,)
            types = tuple(t for a in admitted for t in ((int, float) if a is float else (a,)))
            schema.append((field.name, types, field.default is not MISSING))
    return tuple(schema)


def decode_report(data: bytes | str) -> Report:
    """A report, or `MalformedMessage` for anything else: every field of the right type
    (a count is an int, never a bool), nothing negative, a batch size of at least 1.
    Whatever goes wrong, even a failure no check foresaw, is bad input, never a crash."""
    try:
        return _report(_object(data))
    except MalformedMessage:
        raise
    except Exception as error:
        raise MalformedMessage(f"unreadable report: {type(error).__name__}: {error}") from None


def _report(fields_in: dict[str, Any]) -> Report:
    kind_name = fields_in.get("type")
    kind = REPORTS.get(kind_name) if type(kind_name) is str else None
    if kind is None:
        raise MalformedMessage(f"not a report: {fields_in.get('type')!r:.40}")
    values = {}
    for name, types, optional in _schema(kind):
        if name not in fields_in:
            if not optional:
                raise MalformedMessage(f"a {kind.__name__} report without {name}")
            continue
        value = fields_in[name]
        if type(value) not in types or (type(value) is int and value < 0):
            raise MalformedMessage(f"{name} of a {kind.__name__} report is {value!r:.40}")
        values[name] = value
    if kind is Job and values["batchSize"] < 1:
        raise MalformedMessage(f"batchSize of a Job report is {values['batchSize']}")
    return kind(**values)


def cracks(data: bytes, search_hash: str) -> bool:
    """Is `data` a notice that the word of `search_hash` is found?"""
    try:
        notice = decode_report(data)
    except MalformedMessage:
        return False
    return isinstance(notice, Cracked) and notice.searchHash == search_hash
