import contextlib
import os
import signal
import subprocess
import sys

import pytest


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m patterns.bench ARGS`, run to the end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "patterns.bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alive(pid: int) -> bool:
    """Is `pid` a running process (not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def reap():
    """pids to SIGKILL after the test, whatever happened (a failing test leaves nothing)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        assert pid > 0, f"refusing to kill pid {pid}: it would signal a whole process group"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
