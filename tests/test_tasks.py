"""The hashsum cracker's parts that need no broker: numbering, search, codec, bookkeeping."""

import hashlib
import itertools
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from patterns.tasks import space, wire
from patterns.tasks.collect import Tracker, collect
from patterns.tasks.job import BATCH_SIZE, DEFAULTS, plan, unique
from patterns.tasks.space import ALPHABET, batches, crack, index_of, search_space, word_at
from patterns.tasks.work import SLICE, Worker

NODE_HASH = "f8e966d1e207d02c44511a58dccff2f5429e9a3b"


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


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1, 2]", "a task is a JSON object, not list"),
        (b'{"searchHash": "ab", "alphabet": "ab", "batchStart": 1}', "missing field batchEnd"),
        (b'{"searchHash": "ab", "alphabet": "ab", "batchStart": 1, "batchEnd": 2}',
         "searchHash must be 40 hex digits, not 'ab'"),
        (b'{"searchHash": "%s", "alphabet": "aa", "batchStart": 1, "batchEnd": 2}' % b"0" * 1,
         None),
        (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "aa",'
         b' "batchStart": 1, "batchEnd": 2}', "alphabet must be distinct letters, not 'aa'"),
        (b'{"searchHash": ["0"], "alphabet": "ab", "batchStart": 1, "batchEnd": 2}',
         "searchHash must be 40 hex digits, not ['0']"),
        (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": ["a"],'
         b' "batchStart": 1, "batchEnd": 2}', "alphabet must be distinct letters, not ['a']"),
        (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
         b' "batchStart": true, "batchEnd": 2}', "batchStart must be an integer, not True"),
        (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
         b' "batchStart": 0, "batchEnd": 2}', "batch 0..2 is not a range of indexes from 1"),
        (b'{"searchHash": "0000000000000000000000000000000000000000", "alphabet": "ab",'
         b' "batchStart": 1, "batchEnd": 99999999}',
         "batch of 99,999,999 candidates is over 10,000,000"),
    ],
)  # fmt: skip
def test_a_malformed_task_is_refused_with_its_reason(data: bytes, reason: str | None) -> None:
    with pytest.raises(wire.MalformedTask) as refused:
        wire.decode_task(data)
    if reason is not None:
        assert str(refused.value) == reason


@pytest.mark.parametrize(
    "report",
    [
        wire.Done("wé", "j", "0" * 40, 1, 10_000, 10_000, "node", False, 2),
        wire.Done('w "1"\\\n\x00', None, "f" * 40, 10_001, 20_000, 0, None, True),
        wire.Done("w1", "ü-🙂", "a" * 40, 1, 0, 0, 'qu"ote\u2028', False, 1),
        wire.Job("j", "0" * 40, "ab", 4, 10, 2, 1764000000.125),
        wire.Dead("w1", 'not JSON: "{oops"\n', 3),
    ],
)
def test_reports_encode_as_compact_utf8_json(report: wire.Report) -> None:
    fields = {name: getattr(report, name) for name in report.__dataclass_fields__}
    compact = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    assert wire.encode(report) == compact
    assert wire.decode(compact) == report


@pytest.mark.parametrize(
    "done",
    [
        wire.Done(7, "j", "0" * 40, 1, 10, 10),  # type: ignore[arg-type]
        wire.Done("w1", "j", "0" * 40, 1.0, 10, 10),  # type: ignore[arg-type]
        wire.Done("w1", "j", "0" * 40, 1, "10", 10),  # type: ignore[arg-type]
        wire.Done("w1", ["j"], "0" * 40, 1, 10, 10),  # type: ignore[arg-type]
    ],
)
def test_a_report_with_a_field_of_the_wrong_type_is_refused(done: wire.Done) -> None:
    with pytest.raises((TypeError, ValueError)):
        wire.encode(done)


async def test_a_worker_hashes_sets_aside_and_skips() -> None:
    worker = Worker("w1", max_attempts=3)
    tasks = list(plan(NODE_HASH, 4, batch_size=100_000)[1])
    found = await worker.process(wire.encode_task(tasks[2]))  # 200,001..300,000 holds node
    assert found.results[0] == b"Found: node" and found.dead is None
    done = wire.decode(found.results[1])
    assert isinstance(done, wire.Done)
    assert (done.worker, done.found, done.hashed, done.skipped) == ("w1", "node", 56_313, False)
    skipped = wire.decode((await worker.process(wire.encode_task(tasks[3]))).results[0])
    assert isinstance(skipped, wire.Done) and skipped.skipped and skipped.hashed == 0
    poison = await worker.process(b"{oops")
    assert poison.dead is not None and poison.dead.reason.startswith("not JSON")
    tired = await worker.process(wire.encode_task(tasks[0]), attempts=4)
    assert tired.dead is not None and tired.dead.batchStart == 1
    assert tired.dead.reason == "delivered 4 times, more than 3: never finished"
    assert worker.tally.as_dict()["tasks"] == 2 and worker.tally.dead == 2


async def test_a_notice_stops_a_task_between_slices() -> None:
    worker = Worker("w1")
    other = wire.Task("0" * 40, ALPHABET, 1, 10 * SLICE, "j")
    worker.learn(wire.encode(wire.Cracked("0" * 40, "zz", "j")))
    word, hashed, skipped = await worker.hash_task(other)
    assert (word, hashed, skipped) == (None, 0, True)
    worker.learn(b"junk")  # ignored, logged


def test_the_tracker_accounts_for_every_task_once() -> None:
    tracker = Tracker()
    job = wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 48, 0.0)

    def done(start: int, worker: str = "w1", **extra) -> bytes:
        return wire.encode(wire.Done(worker, "j", NODE_HASH, start, start + 9_999, 10_000, **extra))

    assert tracker.take(done(1)) is None  # before the job report: kept aside
    tracker.take(wire.encode(job))
    tracker.take(done(10_001, "w2"))
    tracker.take(done(10_001, "w2"))  # a redelivered task, reported twice
    tracker.take(done(20_001, found="node"))
    notice = tracker.take(b"Found: node")  # already known: no second notice
    assert notice is None and tracker.word == "node"
    tracker.take(b"garbage")
    tracker.take(b'{"type": "done", "worker": "w9", "job": "j", "searchHash": "x",'
                 b' "batchStart": "1", "batchEnd": 2, "hashed": 2}')  # fmt: skip
    tracker.take(wire.encode(wire.Done("w1", "other", NODE_HASH, 1, 10, 10)))
    tracker.take(wire.encode(wire.Sent("j", 4)))
    assert not tracker.complete
    tracker.take(done(30_001, skipped=True, attempts=2))
    assert tracker.complete
    result = tracker.result()
    assert result["workers"] == {"w1": 2, "w2": 1} and result["skipped"] == 1
    last = result["last_report_s"]
    assert last.keys() == {"w1", "w2"} and 0 <= last["w2"] <= last["w1"] <= result["seconds"]
    assert result["hashed_tasks"] + result["skipped"] == 4 and result["retried"] == 1
    assert (result["duplicates"], result["malformed"], result["foreign"]) == (1, 2, 1)
    ledger = result["ledger"]
    assert (ledger["sent"], ledger["lost"], ledger["duplicated"]) == (4, 0, 1)
    assert result["index"] == 256313
    assert Tracker().result()["ledger"]["sent"] == 0  # nothing known: nothing claimed


async def test_reports_joined_in_one_message_are_each_counted() -> None:
    job = wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 3, 0.0)
    done = [wire.encode(wire.Done("w1", "j", NODE_HASH, s, s + 9_999, 10_000)) for s in (1, 10_001)]
    dead = wire.encode(wire.Dead("w1", 'not JSON: "\n{"', 1, "j", NODE_HASH, 20_001))
    message = wire.join([*done, dead])
    assert wire.split(message) == [*done, dead]  # a newline inside a string is \\n
    assert wire.split(done[0]) == [done[0]] and wire.split(b"Found: a\nb") == [b"Found: a\nb"]

    async def batches() -> AsyncIterator[list[bytes]]:
        yield [wire.encode(job), message, wire.encode(wire.Sent("j", 3))]

    async def broadcast(notice: wire.Cracked) -> None:
        raise AssertionError("nothing was found")

    result = await collect(batches(), broadcast, lambda *args, **kwargs: None, 1.0)
    assert result["complete"] and result["ledger"]["lost"] == 0 and result["dead_tasks"] == 1


def test_a_found_text_from_a_book_worker_stops_the_job() -> None:
    tracker = Tracker()
    tracker.take(wire.encode(wire.Job("j", NODE_HASH, ALPHABET, 4, 10_000, 48, 0.0)))
    notice = tracker.take(b"Found: node")
    assert notice == wire.Cracked(NODE_HASH, "node", "j")
    assert tracker.take(b"Found: else") is None and tracker.foreign == 0


def test_unique_channels_never_are_the_book_ones() -> None:
    for transport, book in DEFAULTS.items():
        mine = unique(transport)
        assert mine != book
        if transport != "zmq":  # zmq: free ports (0), chosen when bound
            assert mine != unique(transport)
            assert mine.tasks.startswith(book.tasks + ".") and mine.group == book.group


def test_the_command_line_names_every_role_and_transport() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "patterns.tasks", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0
    for word in ("producer", "worker", "collector", "zmq", "amqp", "streams", "--prefetch"):
        assert word in run.stdout
