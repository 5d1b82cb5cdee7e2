"""Open-loop load: send at a fixed offered rate, and time each message from its schedule.

A closed-loop sender (send, wait, send) slows down when the system under test stalls, so
it sends fewer messages during the stall and the stall hides from the percentiles:
"coordinated omission". An open-loop sender keeps the schedule: message i is due at
`start + i / rate` whatever happens. If the sender falls behind, the messages that are due
go out at once, each stamped with the time it was *scheduled*, so the receiver's latency
includes the time it waited to be sent.

Sleeping once per message costs more than a message at tens of thousands per second, so
the pacer hands over every message that is due as one batch, then sleeps until the next
one is due. asyncio's timers fire to the millisecond (epoll rounds timeouts up), which
alone would add ~0.5 ms to every latency measured (p50 of the pacer's own lag, measured
here: ~560 us at 1,000-20,000/s). So the last stretch of each wait (under `BLOCK_S`) is
slept with `time.sleep`, which is precise to ~0.1 ms but blocks the event loop: right for
a process that only sends; a process that must also receive meanwhile passes
`precise=False` and accepts the coarser schedule.
"""

import asyncio
import time
from collections.abc import AsyncIterator

BLOCK_S = 0.002


async def paced(rate: float, count: int, precise: bool = True) -> AsyncIterator[list[int]]:
    """Yield batches of scheduled send times (perf_counter_ns) for `count` messages at `rate`/s.

    The consumer sends one message per yielded time, stamped with that time.
    """
    if rate <= 0 or count < 0:
        raise ValueError(f"rate must be > 0 and count >= 0, not rate={rate}, count={count}")
    interval_ns = 1e9 / rate
    start_ns = time.perf_counter_ns()
    sent = 0
    while sent < count:
        now_ns = time.perf_counter_ns()
        due = min(count, int((now_ns - start_ns) / interval_ns) + 1)
        if due > sent:
            yield [start_ns + int(i * interval_ns) for i in range(sent, due)]
            sent = due
            await asyncio.sleep(0)  # let the rest of the loop run even when always behind
            continue
        wait_s = (start_ns + sent * interval_ns - now_ns) / 1e9
        if precise and wait_s < BLOCK_S:
            time.sleep(wait_s)  # noqa: ASYNC251 (deliberate: see the module docstring)
        else:
            await asyncio.sleep(wait_s - BLOCK_S if precise else wait_s)
