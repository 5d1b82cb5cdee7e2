"""The search space: which word each index names, and the hashing loop over a batch of them.

Index -> word is bijective base-N numbering over the alphabet (N letters): with `a..z`,
1 -> `a`, 26 -> `z`, 27 -> `aa`, 702 -> `zz`, 703 -> `aaa`. Every word of length 1 to L has
exactly one index, and the space for max length L is 1 .. N + N^2 + ... + N^L, so a
producer can cut it into batches of consecutive indexes without listing a single word.

`crack` is the CPU-bound part of the whole course. Hashing a word costs a few hundred
nanoseconds, so turning each index into a word from scratch (a few divisions) would
cost as much again: instead it walks the batch in runs that share every letter but the
last two, hashes the shared stem once and, for each ending of two letters, copies that
hash state and feeds it the ending.

Two SHA-1s give the same digests: OpenSSL's (`hashlib.sha1`) and, in most CPython builds,
CPython's own (`_sha1`). For words this short a hash's cost is mostly setting it up and
copying it, and which of the two does that faster depends on the machine (the CPU, the
OpenSSL build), and even on its state of the moment: CPython's was 10% faster on one
machine here, OpenSSL's 3-6% faster on another, and on a third each was the faster in
turn, for seconds at a time. So the kernel times both on a few thousand words, once per
process, and hashes with the faster (`word_sha1`). `python -m patterns.bench tasks`
measures the worker against a plain loop with `hashlib.sha1` and against one with the
SHA-1 the worker chose.
"""

import functools
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence

SHA1S: dict[str, Callable] = {"hashlib": hashlib.sha1}  # OpenSSL's
try:
    from _sha1 import sha1 as _cpython_sha1
except ImportError:  # a Python built without its own hashes
    pass
else:
    SHA1S["_sha1"] = _cpython_sha1
TRIALS, STEPS = 7, 2_000  # rounds per SHA-1, words hashed per round: 15-20 ms in all

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def search_space(alphabet_size: int, max_length: int) -> int:
    """How many words of length 1..max_length there are: N + N^2 + ... + N^max_length."""
    return sum(alphabet_size**length for length in range(1, max_length + 1))


def batches(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(batchStart, batchEnd) pairs, inclusive, covering 1..total; the last may be shorter."""
    for start in range(1, total + 1, batch_size):
        yield start, min(start + batch_size - 1, total)


def _digits(index: int, base: int) -> list[int]:
    """The letters of word `index` as positions in the alphabet, most significant first."""
    if index < 1:
        raise ValueError(f"indexes start at 1, not {index}")
    digits = []
    while index:
        index, digit = divmod(index - 1, base)
        digits.append(digit)
    return digits[::-1]


def word_at(index: int, alphabet: str = ALPHABET) -> str:
    """The word with this index: 1 -> 'a', 27 -> 'aa' (with a..z)."""
    return "".join(alphabet[d] for d in _digits(index, len(alphabet)))


def index_of(word: str, alphabet: str = ALPHABET) -> int:
    """The index of `word`, the inverse of `word_at`."""
    index = 0
    for letter in word:
        position = alphabet.find(letter)
        if position < 0:
            raise ValueError(f"{letter!r} is not in the alphabet {alphabet!r}")
        index = index * len(alphabet) + position + 1
    return index


def crack(search_digest: bytes, alphabet: str, start: int, end: int) -> str | None:
    """The word among indexes start..end whose SHA-1 digest is `search_digest`, or None."""
    if start > end:
        return None
    base = len(alphabet)
    length, below = 1, 0  # the words shorter than `length` have the indexes 1..below
    while below + base**length < start:
        below += base**length
        length += 1
    while start <= end:  # one length at a time: a batch may hold words of two lengths
        size = base**length
        first, last = start - below - 1, min(end - below, size) - 1
        word = _scan(search_digest, alphabet, length, first, last, SHA1S[word_sha1()])
        if word is not None:
            return word
        start, below, length = below + size + 1, below + size, length + 1
    return None


@functools.cache
def word_sha1() -> str:
    """The name (in `SHA1S`) of the SHA-1 that runs the kernel faster here.

    Timed once per process: the best of `TRIALS` alternating rounds of the kernel hashing
    `STEPS` words with each, in CPU time of this thread, so that neither a moment's load
    on a shared machine nor the processes starting beside this one decide it. Either
    gives the same digests: a wrong pick costs only speed.
    """
    nowhere = bytes(20)  # no word's digest: every word is hashed
    best = dict.fromkeys(SHA1S, float("inf"))
    for _ in range(TRIALS):
        for name, sha1 in SHA1S.items():
            began = time.thread_time()
            _scan(nowhere, ALPHABET, 4, 0, STEPS - 1, sha1)
            best[name] = min(best[name], time.thread_time() - began)
    return min(best, key=best.__getitem__)


@functools.lru_cache(maxsize=64)
def _spelling(alphabet: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The alphabet's letters, and every ending of two of them in alphabetical order: made
    once per alphabet, not per batch (the endings of 26 letters take about 40 us to make)."""
    letters = tuple(letter.encode() for letter in alphabet)
    return letters, tuple(second + last for second in letters for last in letters)


def _scan(
    search_digest: bytes, alphabet: str, length: int, lo: int, hi: int, sha1: Callable
) -> str | None:
    """Hash the words of `length` letters numbered lo..hi (from 0, in alphabetical order).

    A word is a stem (all letters but the last two) and an ending (the last two). The stem
    is hashed once; each word costs a copy of the stem's state and an update with its
    ending. Hashing the second-last letter once per run of last letters instead, and
    copying that, costs one more copy and update per run than it saves: with 20 letters,
    3.15-3.18 million words/s against 3.28-3.33 million this way, 3 alternating rounds
    each in two runs. Only the first and the last stem's endings can be partial.
    """
    letters, endings = _spelling(alphabet)
    base = len(letters)
    if length == 1:
        for letter in letters[lo : hi + 1]:
            if sha1(letter).digest() == search_digest:
                return letter.decode()
        return None
    width = base * base  # endings per stem
    for stem_number in range(lo // width, hi // width + 1):
        stem_letters = _spell(stem_number, length - 2, letters)
        copy = sha1(stem_letters).copy
        offset = stem_number * width  # the number of the stem's first word
        run = endings
        if offset < lo or offset + width - 1 > hi:
            run = endings[max(lo - offset, 0) : hi - offset + 1]
        for ending in run:
            state = copy()
            state.update(ending)
            if state.digest() == search_digest:
                return (stem_letters + ending).decode()
    return None


def _spell(number: int, width: int, letters: Sequence[bytes]) -> bytes:
    """Word number `number` (from 0) among the words of exactly `width` letters."""
    base = len(letters)
    spelled = []
    for _ in range(width):
        number, digit = divmod(number, base)
        spelled.append(letters[digit])
    return b"".join(reversed(spelled))
