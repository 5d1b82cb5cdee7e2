"""The search space: which word each index names, and the hashing loop over a batch of them.

Index -> word is bijective base-N numbering over the alphabet (N letters): with `a..z`,
1 -> `a`, 26 -> `z`, 27 -> `aa`, 702 -> `zz`, 703 -> `aaa`. Every word of length 1 to L has
exactly one index, and the space for max length L is 1 .. N + N^2 + ... + N^L, so a
producer can cut it into batches of consecutive indexes without listing a single word.

`crack` is the CPU-bound part of the whole course. Hashing a word costs a few hundred
nanoseconds, so turning each index into a word from scratch (a few divisions) would
cost as much again: instead it walks the batch in runs that share every letter but the
last, hashes the shared prefix once and, for each last letter, copies that hash state
and feeds it one letter. That makes it faster than a plain loop that hashes
ready-made words one by one (`python -m patterns.bench tasks` measures both).
"""

import hashlib
from collections.abc import Iterator

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
    letters = [letter.encode() for letter in alphabet]
    base = len(letters)
    digits = _digits(start, base)  # the current word; its last digit restarts at 0 each run
    index = start
    stem = None  # the hash state of all letters but the last two, kept while they stay
    while index <= end:
        # one run: the words that share all letters but the last, from digits[-1] up to the
        # alphabet's end (or the batch's); their common prefix is hashed once for the run
        if stem is None:
            stem = hashlib.sha1(b"".join(letters[d] for d in digits[:-2]))
        shared = stem.copy()
        if len(digits) > 1:
            shared.update(letters[digits[-2]])
        copy = shared.copy
        first = digits[-1]
        last = min(base, first + end - index + 1)
        for letter in letters[first:last]:
            state = copy()
            state.update(letter)
            if state.digest() == search_digest:
                return b"".join([*(letters[d] for d in digits[:-1]), letter]).decode()
        index += last - first
        digits[-1] = 0
        # the next prefix, as an odometer turns: the common case only bumps the second-last
        # letter; a carry changes the stem (zz -> aaa even adds a letter)
        if len(digits) > 1 and digits[-2] < base - 1:
            digits[-2] += 1
            continue
        stem = None
        position = len(digits) - 2
        while position >= 0 and digits[position] == base - 1:
            digits[position] = 0
            position -= 1
        if position >= 0:
            digits[position] += 1
        else:
            digits.insert(0, 0)
    return None
