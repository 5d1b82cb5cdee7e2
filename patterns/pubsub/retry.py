"""Reconnecting with backoff, and saying so.

A subscriber whose connection drops must neither spin (hammering a broker that is down)
nor give up. It waits 50 ms, then twice as long each time, up to 2 s, with jitter so that
many subscribers cut at once do not all come back in the same instant.
"""

import asyncio
import logging
import random
from collections.abc import Callable

log = logging.getLogger("patterns.pubsub")

# A subscriber calls this with what happened ("subscribed", "lost", "reconnected") and
# details; the default logs it. A measuring child passes one that reports to its parent.
OnState = Callable[[str, str], None]


def log_state(state: str, detail: str) -> None:
    log.warning("%s: %s", state, detail)


class Backoff:
    def __init__(self, first_s: float = 0.05, cap_s: float = 2.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.delay_s = first_s

    async def wait(self) -> None:
        await asyncio.sleep(self.delay_s * random.uniform(0.5, 1.0))
        self.delay_s = min(self.cap_s, self.delay_s * 2)

    def reset(self) -> None:
        self.delay_s = self.first_s


def reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
