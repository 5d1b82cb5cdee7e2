"""What travels: tasks, results, and the reports that let a collector account for a job.

A task is the book's JSON object, unchanged, so the book's Node.js producers feed our
workers and ours feed theirs:

    {"searchHash": "f8e9...9a3b", "alphabet": "ab...z", "batchStart": 1, "batchEnd": 10000}

A found word is the book's text `Found: node`. Everything else is ours, JSON objects with
a "type", on the same results channel (a book collector just prints them):

* `job`: the producer announces a job (its id, how many tasks) before its first task;
* `sent`: the producer says how many tasks it sent in the end (fewer if the job stopped early);
* `done`: a worker finished a task (hashed it, or skipped it because the word was found);
* `dead`: a worker set a task aside (a dead letter) and says why;
* `cracked`: the collector's notice to workers and producer that a job's word is found.

Our producer adds `"job": <id>` to each task; a worker echoes it in its reports, so a
collector tells this job's reports from leftovers of another. Book tasks have no job id;
decoding accepts both, and ignores fields it does not know.
"""

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from patterns.messages import MalformedMessage

FOUND_PREFIX = "Found: "
MAX_BATCH = 10_000_000  # candidates per task: a bigger one is refused, not hashed for hours
HEX_SHA1 = re.compile(r"[0-9a-f]{40}")


def _compact_encoder() -> Callable[[Any], str]:
    """`json.dumps(obj, separators=(",", ":"), ensure_ascii=False)`, set up once.

    json.dumps with options builds a JSONEncoder per call, and JSONEncoder.encode builds
    its C encoder (json.encoder.c_make_encoder) per call: together most of what encoding a
    worker's report costs. Here the C encoder is built once and kept. It is made without
    a check for circular references: every message here is a flat object.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    try:
        make = json.encoder.c_make_encoder(  # the arguments JSONEncoder.iterencode gives it
            None, encoder.default, json.encoder.encode_basestring, None, ":", ",",
            False, False, True,
        )  # fmt: skip
    except TypeError:  # no C accelerator (it is None), or another signature: the slow way
        return encoder.encode
    return lambda obj: "".join(make(obj, 0))


_to_json = _compact_encoder()


class MalformedTask(MalformedMessage):
    """Not a task; `str(error)` says why (it becomes the dead letter's reason)."""


# The messages are dataclasses with slots, not frozen ones: a frozen dataclass sets each
# field through object.__setattr__, five times as slow, and a worker makes two per task.
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


def encode_task(task: Task) -> bytes:
    fields: dict[str, Any] = {
        "searchHash": task.search_hash,
        "alphabet": task.alphabet,
        "batchStart": task.batch_start,
        "batchEnd": task.batch_end,
    }
    if task.job is not None:
        fields["job"] = task.job
    return _to_json(fields).encode()


# Every task of a job carries the same searchHash and alphabet: each is checked once per
# job (the last few are remembered), not once per task.
@functools.lru_cache(maxsize=64)
def _search_hash(search_hash: str) -> str:
    """The searchHash lower-cased, if it is one."""
    if not HEX_SHA1.fullmatch(search_hash.lower()):
        raise MalformedTask(f"searchHash must be 40 hex digits, not {search_hash!r}")
    return search_hash.lower()


@functools.lru_cache(maxsize=64)
def _alphabet(alphabet: str) -> str:
    if not alphabet or len(set(alphabet)) != len(alphabet):
        raise MalformedTask(f"alphabet must be distinct letters, not {alphabet!r}")
    return alphabet


def decode_task(data: bytes | str) -> Task:
    """The task in `data`, or `MalformedTask` naming the first problem found."""
    try:  # UTF-8 (WIRE.md): decoded here, json.loads would first guess the encoding
        fields = json.loads(data.decode() if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise MalformedTask(f"not JSON: {error}") from None
    if type(fields) is not dict:
        raise MalformedTask(f"a task is a JSON object, not {type(fields).__name__}")
    try:
        search_hash, alphabet = fields["searchHash"], fields["alphabet"]
        start, end = fields["batchStart"], fields["batchEnd"]
    except KeyError as error:
        raise MalformedTask(f"missing field {error.args[0]}") from None
    if type(search_hash) is not str:  # (unhashable, as a list is: no cache for it)
        raise MalformedTask(f"searchHash must be 40 hex digits, not {search_hash!r}")
    search_hash = _search_hash(search_hash)
    if type(alphabet) is not str:
        raise MalformedTask(f"alphabet must be distinct letters, not {alphabet!r}")
    alphabet = _alphabet(alphabet)
    for name, value in (("batchStart", start), ("batchEnd", end)):
        if type(value) is not int:  # bool is an int subclass: refuse it too
            raise MalformedTask(f"{name} must be an integer, not {value!r}")
    if start < 1 or end < start - 1:  # end == start - 1 is an empty batch
        raise MalformedTask(f"batch {start}..{end} is not a range of indexes from 1")
    if end - start + 1 > MAX_BATCH:
        raise MalformedTask(f"batch of {end - start + 1:,} candidates is over {MAX_BATCH:,}")
    job = fields.get("job")
    if job is not None and type(job) is not str:
        raise MalformedTask(f"job must be a string, not {job!r}")
    return Task(search_hash, alphabet, start, end, job)


def found(word: str) -> bytes:
    """The book's result text."""
    return f"{FOUND_PREFIX}{word}".encode()


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
    if type(report) is Done:
        return _encode_done(report)
    fields = {name: getattr(report, name) for name in report.__dataclass_fields__}
    return _to_json(fields).encode()


_string = json.encoder.encode_basestring  # a JSON string, non-ASCII kept (ensure_ascii=False)


def _text(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _encode_done(done: Done) -> bytes:
    """`done` as compact JSON, written out field by field: a worker sends one per task,
    and this is a third of what the general way costs (a dict of its ten fields, then the
    C encoder: 1.9 us here, against 0.6). The same bytes as compact json.dumps (tests say
    so) for the declared types; a str field takes a str (or None where None is allowed) and
    an int field an int (`:d`), anything else is refused with TypeError or ValueError (a
    bool in an int field passes as 1 or 0, which the collector reads as the int it is)."""
    return (
        f'{{"worker":{_string(done.worker)},"job":{_text(done.job)},'
        f'"searchHash":{_string(done.searchHash)},"batchStart":{done.batchStart:d},'
        f'"batchEnd":{done.batchEnd:d},"hashed":{done.hashed:d},"found":{_text(done.found)},'
        f'"skipped":{"true" if done.skipped else "false"},"attempts":{done.attempts:d},'
        f'"type":"done"}}'
    ).encode()


INTEGERS = {  # the fields of each report that a collector counts or computes with
    "job": ("maxLength", "batchSize", "tasks"),
    "sent": ("tasks",),
    "done": ("batchStart", "batchEnd", "hashed", "attempts"),
    "dead": ("attempts",),
}


def decode(data: bytes | str) -> Report | str:
    """A report, or the word of a `Found: <word>` text; `MalformedMessage` for anything else."""
    text = data.decode(errors="replace") if isinstance(data, bytes | bytearray) else data
    if text.startswith(FOUND_PREFIX):
        return text[len(FOUND_PREFIX) :]
    try:
        fields = json.loads(text)
        kind = fields.pop("type")
        if not all(type(fields.get(name, 0)) is int for name in INTEGERS.get(kind, ())):
            raise TypeError("a count or an index that is not an integer")
        return REPORTS[kind](**fields)
    except (json.JSONDecodeError, RecursionError, AttributeError, KeyError, TypeError):
        raise MalformedMessage(f"not a result or report: {text[:60]!r}") from None


def join(reports: list[bytes]) -> bytes:
    """Several reports in one message: one JSON object per line (JSON Lines). A report has
    no newline of its own: json.dumps writes one inside a string as \\n."""
    return b"\n".join(reports)


def split(message: bytes) -> list[bytes]:
    """The reports in one message of the results channel: one, or one per line (`join`).
    Only JSON is split: a `Found: <word>` text is always a message of its own."""
    if message.startswith(b"{") and b"\n" in message:
        return message.split(b"\n")
    return [message]


def cracks(data: bytes, search_hash: str) -> bool:
    """Is `data` a notice that the word of `search_hash` is found?"""
    try:
        notice = decode(data)
    except MalformedMessage:
        return False
    return isinstance(notice, Cracked) and notice.searchHash == search_hash
