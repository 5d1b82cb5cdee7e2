"""The hashsum cracker's parts that need no broker: numbering, search, codec, bookkeeping."""

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patterns.messages import MalformedMessage
from patterns.tasks import space, wire
from patterns.tasks.collect import Collector
from patterns.tasks.job import BATCH_SIZE, DEFAULTS, plan, unique
from patterns.tasks.space import ALPHABET, batches, crack, index_of, search_space, word_at
from patterns.tasks.work import SLICE, Worker

NODE_HASH = "f8e966d1e207d02c44511a58dccff2f5429e9a3b"


def json_values() -> st.SearchStrategy[bytes]:
    """JSON objects with the tasks' and reports' field names, and any values."""
    names = st.sampled_from(
        ["searchHash", "alphabet", "batchStart", "batchEnd", "job", "type", "worker",
         "hashed", "found", "batchSize", "tasks", "reason", "attempts", "x"]
    )  # fmt: skip
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=5,
    )
    kinds = st.sampled_from(["done", "dead", "job", "sent", "cracked", "other"])
    fields = st.dictionaries(names, values, max_size=10)
    return st.builds(lambda f, kind: json.dumps(f | {"type": kind}).encode(), fields, kinds)


@pytest.mark.parametrize(
    ("index", "word"),
    [(1, "a"), (26, "z"), (27, "aa"), (52, "az"), (53, "ba"), (702, "zz"), (703, "aaa"),
     (475254, "zzzz"), (256313, "node")],
)  # fmt: skip
def test_the_book_numbering(index: int, word: str) -> None:
    assert word_at(index) == word
    assert index_of(word) == index


def test_the_search_space_and_its_batches() -> None:
    assert search_space(26, 4) == 475254
    cut = list(batches(475254, BATCH_SIZE))
    assert len(cut) == 48 and cut[0] == (1, 10_000) and cut[-1] == (470_001, 475_254)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(cut))


def test_numbering_is_a_bijection_over_any_alphabet() -> None:
    for alphabet in ("ab", "xyz", "é€z"):
        words = [word_at(i, alphabet) for i in range(1, search_space(len(alphabet), 4) + 1)]
        assert len(set(words)) == len(words)
        assert [index_of(w, alphabet) for w in words] == list(range(1, len(words) + 1))
    with pytest.raises(ValueError):
        word_at(0)


def test_crack_finds_the_book_word_and_only_inside_its_batch() -> None:
    digest = bytes.fromhex(NODE_HASH)
    assert crack(digest, ALPHABET, 1, 475254) == "node"
    assert crack(digest, ALPHABET, 250_001, 260_000) == "node"
    assert crack(digest, ALPHABET, 1, 256_312) is None
    assert crack(digest, ALPHABET, 256_314, 475_254) is None
    assert crack(digest, ALPHABET, 5, 4) is None  # an empty batch


def test_crack_agrees_with_hashing_every_word_one_by_one() -> None:
    rng = random.Random(7)
    for alphabet in ("a", "ab", "xyz", "é€z", ALPHABET):
        for _ in range(200):
            start = rng.randint(1, 2_000)
            end = rng.randint(start - 1, start + 120)
            target = rng.randint(max(1, start - 2), end + 2)
            digest = hashlib.sha1(word_at(target, alphabet).encode()).digest()
            expected = word_at(target, alphabet) if start <= target <= end else None
            assert crack(digest, alphabet, start, end) == expected, (alphabet, start, end)


@pytest.mark.parametrize("sha1", sorted(space.SHA1S))
def test_either_sha1_finds_the_same_words(sha1: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel hashes with whichever SHA-1 is faster here: both must find the same."""
    assert space.word_sha1() in space.SHA1S
    monkeypatch.setattr(space, "word_sha1", lambda: sha1)
    digest = bytes.fromhex(NODE_HASH)
    assert crack(digest, ALPHABET, 250_001, 260_000) == "node"
    assert crack(digest, ALPHABET, 1, 256_312) is None
    assert crack(hashlib.sha1(b"z").digest(), ALPHABET, 1, 26) == "z"


def test_tasks_round_trip_and_keep_the_book_fields() -> None:
    job, tasks = plan(NODE_HASH, 4)
    first = next(tasks)
    fields = json.loads(wire.encode_task(first))
    assert fields == {
        "searchHash": NODE_HASH, "alphabet": ALPHABET, "batchStart": 1, "batchEnd": 10_000,
        "job": job.job,
    }  # fmt: skip
    assert wire.decode_task(wire.encode_task(first)) == first
    # a book producer's task: no job, and amqplib's off-by-one batches overlap
    book = b'{"searchHash":"F8E966D1E207D02C44511A58DCCFF2F5429E9A3B","alphabet":"abc",'
    book += b'"batchStart":1,"batchEnd":10001}'
    task = wire.decode_task(book)
    assert (task.search_hash, task.job, task.candidates) == (NODE_HASH, None, 10_001)


BAD_TASKS = [
    (b"not json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"[1, 2]", "a JSON object is expected, not list"),
    (b'{"searchHash": "ab", "alphabet": "ab", "batchStart": 1}', "missing field batchEnd"),
    (b'{"searchHash": "ab", "alphabet": "ab", "batchStart": 1, "batchEnd": 2}',
     "searchHash must be 40 hex digits, not 'ab'"),
    (b'{"searchHash": "%s", "alphabet": "aa", "batchStart": 1, "batchEnd": 2}' % b"0" * 1, None),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "aa",'
     b' "batchStart": 1, "batchEnd": 2}', "alphabet must be distinct letters, not 'aa'"),
    (b'{"searchHash": ["0"], "alphabet": "ab", "batchStart": 1, "batchEnd": 2}',
     "searchHash must be 40 hex digits, not ['0']"),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": ["a"],'
     b' "batchStart": 1, "batchEnd": 2}', "alphabet must be 2 to 256 letters, not ['a']"),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
     b' "batchStart": true, "batchEnd": 2}', "batchStart must be an integer, not True"),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
     b' "batchStart": 0, "batchEnd": 2}', "batch 0..2 is not a range of indexes from 1"),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
     b' "batchStart": 1, "batchEnd": 99999999}',
     "batch of 99,999,999 candidates is over 10,000,000"),
    # a task that would never end: one letter, a trillion candidates later
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "a",'
     b' "batchStart": 1000000000000, "batchEnd": 1000000000000}',
     "alphabet must be 2 to 256 letters, not 'a'"),
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
     b' "batchStart": 1000000000000, "batchEnd": 1000000000000}',
     "batch 1000000000000..1000000000000 names words over 16 letters"),
    # json.loads raises a plain ValueError for an integer this long, not JSONDecodeError
    (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
     b' "batchStart": ' + b"9" * 4_400 + b', "batchEnd": 2}', None),
    (b"\xff\xfe", None),
    (b"{" * 5_000, None),
]  # fmt: skip


@pytest.mark.parametrize(("data", "reason"), BAD_TASKS)
def test_a_malformed_task_is_refused_with_its_reason(data: bytes, reason: str | None) -> None:
    with pytest.raises(wire.MalformedTask) as refused:
        wire.decode_task(data)
    if reason is not None:
        assert str(refused.value) == reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode), json_values()))
def test_no_bytes_make_decoding_raise_anything_but_malformed(data: bytes) -> None:
    for decode in (wire.decode_task, wire.decode_report):
        with contextlib.suppress(MalformedMessage):
            decode(data)


@pytest.mark.parametrize(
    "report",
    [
        wire.Done("wé", "j", "0" * 40, 1, 10_000, 10_000, "node", False, 2),
        wire.Done('w "1"\\\n\x00', None, "f" * 40, 10_001, 20_000, 0, None, True),
        wire.Done("w1", "ü-🙂", "a" * 40, 1, 0, 0, 'qu"ote\u2028', False, 1),
        wire.Job("j", "0" * 40, "ab", 4, 10, 2, 1764000000.125),
        wire.Dead("w1", 'not JSON: "{oops"\n', 3),
        wire.Sent("j", 0),
        wire.Cracked("0" * 40, "node"),
    ],
)
def test_reports_round_trip_as_compact_utf8_json(report: wire.Report) -> None:
    fields = {name: getattr(report, name) for name in report.__dataclass_fields__}
    compact = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    assert wire.encode(report) == compact
    assert wire.decode_report(compact) == report


@pytest.mark.parametrize(
    "fields",
    [
        {"worker": 7},
        {"batchStart": 1.0},
        {"batchEnd": "10"},
        {"job": ["j"]},
        {"found": 5},
        {"hashed": True},
        {"attempts": -1},
        {"hashed": 10**4_000},
    ],
)
def test_a_report_with_a_field_of_the_wrong_type_is_refused(fields: dict) -> None:
    done = {"type": "done", "worker": "w1", "job": "j", "searchHash": "0" * 40}
    done |= {"batchStart": 1, "batchEnd": 10, "hashed": 10} | fields
    data = json.dumps(done).encode() if fields != {"hashed": 10**4_000} else _huge(done)
    with pytest.raises(MalformedMessage):
        wire.decode_report(data)


def _huge(fields: dict) -> bytes:
    return (
        json.dumps(fields | {"hashed": 1})
        .replace('"hashed": 1', '"hashed": ' + "9" * 4_000)
        .encode()
    )


def test_a_job_of_batch_size_zero_is_refused() -> None:
    job = wire.encode(wire.Job("j", NODE_HASH, "ab", 4, 0, 1, 0.0))
    with pytest.raises(MalformedMessage, match="batchSize"):
        wire.decode_report(job)


async def test_a_worker_hashes_sets_aside_and_skips() -> None:
    worker = Worker("w1", max_attempts=3)
    tasks = list(plan(NODE_HASH, 4, batch_size=100_000)[1])
    found = await worker.process(wire.encode_task(tasks[2]))  # 200,001..300,000 holds node
    assert found.result == b"Found: node" and found.dead is None
    done = wire.decode_report(found.report)
    assert isinstance(done, wire.Done)
    assert (done.worker, done.found, done.hashed, done.skipped) == ("w1", "node", 56_313, False)
    skipped = wire.decode_report((await worker.process(wire.encode_task(tasks[3]))).report)
    assert isinstance(skipped, wire.Done) and skipped.skipped and skipped.hashed == 0
    poison = await worker.process(b"{oops")
    assert poison.dead is not None and poison.dead.reason.startswith("not JSON")
    assert poison.result is None
    tired = await worker.process(wire.encode_task(tasks[0]), attempts=4)
    assert tired.dead is not None and tired.dead.batchStart == 1
    assert tired.dead.reason == "delivered 4 times, more than 3: never finished"
    assert worker.tally.as_dict()["tasks"] == 2 and worker.tally.dead == 2


async def test_a_task_over_its_time_budget_is_given_up_between_slices() -> None:
    worker = Worker("w1", budget_s=0.05)
    long = wire.Task("0" * 40, ALPHABET, 1, 9_000_000, "j")  # seconds of hashing
    started = time.monotonic()
    outcome = await worker.process(wire.encode_task(long))
    assert (
        outcome.dead is not None and outcome.dead.reason == "too long: still hashing after 0.05 s"
    )
    assert time.monotonic() - started < 2  # a slice or two past the budget, not the task


async def test_a_notice_stops_a_task_between_slices() -> None:
    worker = Worker("w1")
    other = wire.Task("0" * 40, ALPHABET, 1, 10 * SLICE, "j")
    worker.learn(wire.encode(wire.Cracked("0" * 40, "zz", "j")))
    word, hashed, skipped = await worker.hash_task(other)
    assert (word, hashed, skipped) == (None, 0, True)
    worker.learn(b"junk")  # ignored, logged


def done(start: int, worker: str = "w1", job: str = "j", **extra: Any) -> bytes:
    return wire.encode(wire.Done(worker, job, NODE_HASH, start, start + 9_999, 10_000, **extra))


def test_the_collector_accounts_for_every_task_once() -> None:
    events = []
    collected = Collector(lambda event, **fields: events.append(event))
    job = wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 48, 0.0)
    assert collected.take(done(1)) is None  # before the job report: kept aside
    collected.take(wire.encode(job))
    collected.take(done(10_001, "w2"))
    collected.take(done(10_001, "w2"))  # a redelivered task, reported twice
    notice = collected.take(done(20_001, found="node"))
    assert notice == wire.Cracked(NODE_HASH, "node", "j") and events == ["found"]
    assert collected.take(b"Found: node") is None  # already known: no second notice
    collected.take(b"garbage")
    collected.take(b'{"type": "done", "worker": "w9", "job": "j", "searchHash": "x",'
                   b' "batchStart": "1", "batchEnd": 2, "hashed": 2}')  # fmt: skip
    collected.take(wire.encode(wire.Done("w1", "other", NODE_HASH, 1, 10, 10)))
    collected.take(wire.encode(wire.Sent("j", 4)))
    assert not collected.complete
    collected.take(done(30_001, skipped=True, attempts=2))
    assert collected.complete
    result = collected.result()
    assert result["workers"] == {"w1": 2, "w2": 1} and result["skipped"] == 1
    last = result["last_report_s"]
    assert last.keys() == {"w1", "w2"} and 0 <= last["w2"] <= last["w1"] <= result["seconds"]
    assert result["hashed_tasks"] + result["skipped"] == 4 and result["retried"] == 1
    assert (result["duplicates"], result["malformed"], result["foreign"]) == (1, 2, 1)
    ledger = result["ledger"]
    assert (ledger["sent"], ledger["lost"], ledger["duplicated"]) == (4, 0, 1)
    assert result["index"] == 256313 and result["missing"] == 0
    assert Collector().result()["ledger"]["sent"] == 0  # nothing known: nothing claimed


@pytest.mark.parametrize(
    "report",
    [
        b'{"type": "done", "worker": "w1", "job": "j", "searchHash": "x", "batchStart": 1,'
        b' "batchEnd": 2, "hashed": 2, "found": 5}',
        b'{"type": "done", "worker": [1], "job": "j", "searchHash": "x", "batchStart": 1,'
        b' "batchEnd": 2, "hashed": 2}',
        b'{"type": "job", "job": "j", "searchHash": "x", "alphabet": "ab", "maxLength": 4,'
        b' "batchSize": 0, "tasks": 3, "started": 0}',
        b'{"type": "sent", "job": "j", "tasks": ' + b"9" * 4_400 + b"}",
        b'{"type": "dead", "worker": "w1", "reason": null, "attempts": 1}',
    ],
)
def test_a_malformed_report_is_counted_and_never_stops_the_collector(report: bytes) -> None:
    collected = Collector()
    collected.take(wire.encode(wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 2, 0.0)))
    assert collected.take(report) is None and collected.malformed == 1
    collected.take(done(1))
    collected.take(done(10_001))
    collected.take(wire.encode(wire.Sent("j", 2)))
    assert collected.complete


async def test_a_collector_that_hears_nothing_names_what_is_missing() -> None:
    collected = Collector()
    collected.take(wire.encode(wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 3, 0.0)))
    collected.take(done(10_001))
    await collected.wait(idle_timeout=0.1, interval=0.05)
    result = collected.result()
    assert not result["complete"] and result["missing"] == 2
    assert result["missing_batches"] == [1, 20_001]
    assert result["gave_up"] == "nothing came for 0.1 s with 1 of 3 tasks accounted for"


async def test_a_collector_told_the_broker_lost_its_data_stops_at_once() -> None:
    collected = Collector()
    collected.take(wire.encode(wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 3, 0.0)))
    waiting = asyncio.create_task(collected.wait(idle_timeout=60))
    await asyncio.sleep(0.05)
    collected.lost("the stream lost entries")
    await asyncio.wait_for(waiting, 2)
    assert collected.result()["gave_up"] == "the stream lost entries"


def test_a_found_text_from_a_book_worker_stops_the_job() -> None:
    collected = Collector()
    collected.take(wire.encode(wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 48, 0.0)))
    notice = collected.take(b"Found: node")
    assert notice == wire.Cracked(NODE_HASH, "node", "j")
    assert collected.take(b"Found: else") is None and collected.foreign == 0


def test_unique_channels_never_are_the_book_ones() -> None:
    for transport, book in DEFAULTS.items():
        mine = unique(transport)
        assert mine != book
        if transport != "zmq":  # zmq: free ports (0), chosen when bound
            assert mine != unique(transport)
            assert mine.tasks.startswith(book.tasks + ".") and mine.group == book.group
            assert mine.reports.startswith(book.reports + ".")


def tasks_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "patterns.tasks", *args], capture_output=True, text=True
    )


def test_the_command_line_names_every_role_and_transport() -> None:
    run = tasks_cli("--help")
    assert run.returncode == 0
    for word in ("producer", "worker", "collector"):
        assert word in run.stdout


def test_each_role_lists_its_own_options_only() -> None:
    worker = tasks_cli("worker", "--help").stdout
    assert "--prefetch" in worker and "--transport" in worker and "{zmq,amqp,streams}" in worker
    for producer_only in ("--max-length", "--word", "--hash", "--window", "--batch-size"):
        assert producer_only not in worker
    producer = tasks_cli("producer", "--help").stdout
    assert "--window" in producer and "--prefetch" not in producer
    assert "--idle-timeout" in tasks_cli("collector", "--help").stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("worker", "--transport", "kafka"),
         "argument --transport: invalid choice: 'kafka' (choose from 'zmq', 'amqp', 'streams')"),
        (("worker", "--max-length", "4"), "unrecognized arguments: --max-length 4"),
        (("producer", "--alphabet", "a", "--word", "a"), "must be 2 to 256 distinct letters"),
        (("producer", "--hash", "xyz"), "argument --hash: must be 40 hex digits, not 'xyz'"),
        (("nobody",), "invalid choice: 'nobody'"),
    ],
)  # fmt: skip
def test_a_wrong_option_is_one_line_naming_it(args: tuple[str, ...], said: str) -> None:
    run = tasks_cli(*args)
    assert run.returncode == 2 and said in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
