"""The delivery ledger: did every message arrive, once, in order?

Each producer numbers its messages 0, 1, 2, ...; the receiver records `(producer, seq)`
for every arrival (one list append, cheap enough for every message). The report is
computed in bulk afterwards:

* lost: sequence numbers the producer sent that never arrived;
* duplicated: arrivals beyond the first of the same sequence number;
* out of order: first arrivals of a number lower than one already seen from that producer;
* unexpected: numbers the producer says it never sent (a corrupted or foreign message).

It cannot know what was sent but never arrived unless told, so `report` takes how many
each producer sent.
"""

from array import array
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

SHOWN = 10  # how many lost sequence numbers a printed report lists per producer


@dataclass(frozen=True)
class LedgerReport:
    sent: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    lost_seqs: dict[Hashable, list[int]] = field(default_factory=dict)

    @property
    def exactly_once_in_order(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.unexpected)

    def __str__(self) -> str:
        text = (
            f"sent {self.sent:,}  received {self.received:,}  lost {self.lost:,}  "
            f"duplicated {self.duplicated:,}  out of order {self.out_of_order:,}"
        )
        if self.unexpected:
            text += f"  unexpected {self.unexpected:,}"
        for producer, seqs in self.lost_seqs.items():
            if seqs:
                more = f" ... (+{len(seqs) - SHOWN:,} more)" if len(seqs) > SHOWN else ""
                text += f"\n  lost from {producer}: {seqs[:SHOWN]}{more}"
        return text


class DeliveryLedger:
    def __init__(self) -> None:
        self._arrivals: dict[Hashable, array] = {}

    def record(self, producer: Hashable, seq: int) -> None:
        try:
            self._arrivals[producer].append(seq)
        except KeyError:
            self._arrivals[producer] = array("q", [seq])

    def received(self) -> int:
        return sum(len(seqs) for seqs in self._arrivals.values())

    def report(self, sent: Mapping[Hashable, int]) -> LedgerReport:
        """Account for every message: `sent[producer]` is how many it numbered 0..n-1."""
        totals = dict.fromkeys(("received", "lost", "duplicated", "out_of_order", "unexpected"), 0)
        lost_seqs: dict[Hashable, list[int]] = {}
        for producer in {*sent, *self._arrivals}:
            count = sent.get(producer, 0)
            seqs = np.frombuffer(self._arrivals.get(producer, array("q")), dtype=np.int64)
            unique, first_index = np.unique(seqs, return_index=True)
            # first arrivals, in the order they arrived
            firsts = seqs[np.sort(first_index)]
            highest_before = np.maximum.accumulate(firsts)[:-1]
            lost = np.setdiff1d(np.arange(count, dtype=np.int64), unique, assume_unique=True)
            totals["received"] += seqs.size
            totals["lost"] += lost.size
            totals["duplicated"] += seqs.size - unique.size
            totals["out_of_order"] += int(np.count_nonzero(firsts[1:] < highest_before))
            totals["unexpected"] += int(np.count_nonzero((unique < 0) | (unique >= count)))
            if lost.size:
                lost_seqs[producer] = lost.tolist()
        return LedgerReport(sent=sum(sent.values()), lost_seqs=lost_seqs, **totals)

    def clear(self) -> None:
        self._arrivals.clear()
