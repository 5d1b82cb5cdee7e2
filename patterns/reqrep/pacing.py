"""An open-loop schedule for a process that sends *and* receives: a kernel timer.

A requester under open-loop load starts request i at `start + i / rate` whatever
happened to the others, and times it from that scheduled instant, so a stall anywhere
(the replier, the broker, the requester's own loop) lands in the latencies instead of
silently slowing the load down (coordinated omission). Any pacer that stamps requests
with their *scheduled* time gets that right. What differs is how late the pacer itself
hands requests over, because that lateness is added to every latency measured:

* `patterns.measure.paced(precise=False)` sleeps with asyncio's timers, which wake to the
  millisecond: each request starts up to a millisecond late, more than a round trip over
  a pipe or ZeroMQ takes;
* `paced(precise=True)` sleeps the last stretch with `time.sleep`, which blocks the event
  loop, so replies that arrive meanwhile wait to be read: right for a sender that only
  sends, wrong for a requester;
* a sender thread could sleep precisely, but it must take the GIL from the loop's thread
  each time it wakes, and hand every request over through the loop's self-pipe;
* `timer_paced` (here) arms a Linux timerfd, a timer with nanosecond resolution that is a
  file descriptor: the event loop waits for it together with its sockets, so requests
  start on time while replies are read as they come, in one thread.
"""

import asyncio
import ctypes
import os
import struct
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from patterns.measure import LatencySummary, percentiles

CLOCK_MONOTONIC = 1  # the clock of time.perf_counter_ns on Linux
TFD_NONBLOCK, TFD_CLOEXEC, TFD_TIMER_ABSTIME = os.O_NONBLOCK, os.O_CLOEXEC, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("first", _Timespec)]


def _timespec(ns: int) -> _Timespec:
    return _Timespec(*divmod(ns, 1_000_000_000))


def periodic_timer(first_ns: int, interval_ns: int) -> int:
    """A timerfd that expires at `first_ns` (perf_counter_ns) and every `interval_ns` after."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create failed")
    when = _Itimerspec(_timespec(interval_ns), _timespec(first_ns))
    if libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(when), None) != 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "timerfd_settime failed")
    return fd


async def timer_paced(rate: float, count: int) -> AsyncIterator[list[int]]:
    """Yield batches of scheduled times (perf_counter_ns) for `count` requests at `rate`/s.

    The same contract as `patterns.measure.paced`: each yielded time is one request, due
    then; if the loop was busy, every request that fell due meanwhile comes in one batch.
    """
    if rate <= 0 or count < 0:
        raise ValueError(f"rate must be > 0 and count >= 0, not rate={rate}, count={count}")
    interval_ns = max(1, round(1e9 / rate))
    start_ns = time.perf_counter_ns()
    fd = periodic_timer(start_ns, interval_ns)
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    expired = 0

    def on_timer() -> None:
        nonlocal expired
        try:
            expired += struct.unpack("Q", os.read(fd, 8))[0]
        except BlockingIOError:
            return
        fired.set()

    loop.add_reader(fd, on_timer)
    issued = 0
    try:
        while issued < count:
            await fired.wait()
            fired.clear()
            due = min(count, expired)
            yield [start_ns + i * interval_ns for i in range(issued, due)]
            issued = due
    finally:
        loop.remove_reader(fd)
        os.close(fd)


Pacer = Callable[[float, int], AsyncIterator[list[int]]]


async def lateness(pacer: Pacer, rate: float, count: int) -> LatencySummary:
    """How late `pacer` hands requests over: a floor under every latency measured with it."""
    late_ns = []
    async for due in pacer(rate, count):
        now_ns = time.perf_counter_ns()
        late_ns += [now_ns - scheduled_ns for scheduled_ns in due]
    return percentiles(np.array(late_ns), limit_ns=10**10)
