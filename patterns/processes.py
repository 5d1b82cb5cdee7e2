"""Child processes for notebooks and tests: started, awaited until ready, always reaped.

    child = await start("patterns.fundamentals.oneway", "receive", "--transport", "zmq")
    ...
    await child.stop()

A child runs `python -m <module> <args>`, exactly what a reader would type in a terminal,
through a small launcher that ties its life to ours. It talks back over a pipe of JSON
lines, its *reports*: the first one, `{"event": "ready", ...}`, says it is ready to work
(after binding its sockets, so a readiness report is a fact, not a guess or a sleep);
later ones carry live statistics and results. Its stdout and stderr go to a log file,
whose tail is in the error when it fails to start.

Nothing outlives the notebook: each child leads its own process group, so stopping it
stops anything it started; the children still running when the interpreter exits are
stopped by an `atexit` hook; and if the parent dies without running it (a kernel killed
by a restart), Linux's parent-death signal (PR_SET_PDEATHSIG) kills the child. That one is
SIGKILL, not SIGTERM: a child busy on its event loop (hashing, say) would not get round to
a SIGTERM, and a parent that is gone cannot wait for a graceful stop anyway.
"""

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import random
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
REPORT_FD = "PATTERNS_REPORT_FD"
PARENT_PID = "PATTERNS_PARENT_PID"
ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1

_living: set["Child"] = set()


class ChildFailed(RuntimeError):
    """A child exited, or did not get ready, when it should have; the message has its log."""


class Child:
    """A running `python -m module args` and the reports it sends."""

    def __init__(self, name: str, argv: list[str], process: subprocess.Popen, log_path: Path):
        self.name = name
        self.argv = argv
        self.process = process
        self.log_path = log_path
        self.ready: dict[str, Any] = {}  # the "ready" report: ports bound, names chosen...
        self._reports: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pump: asyncio.Task | None = None

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Child {self.name} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def command(self) -> str:
        """The terminal command a reader would type to run this child."""
        return " ".join(["python", "-m", *self.argv[3:]])

    def log(self, last_lines: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last_lines:])

    async def _read_reports(self, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                self._reports.put_nowait(json.loads(line))
        finally:
            transport.close()
            self._reports.put_nowait(None)

    async def next_report(self, event: str | None = None, timeout: float | None = None) -> dict:
        """The next report (of that event, skipping others); `ChildFailed` if the child exits."""
        async with asyncio.timeout(timeout):
            while True:
                report = await self._reports.get()
                if report is None:
                    self._reports.put_nowait(None)  # every later call sees the end too
                    await self.wait()
                    raise ChildFailed(
                        f"{self.name} exited with code {self.returncode} before reporting "
                        f"{event or 'anything more'}; its log:\n{self.log()}"
                    )
                if event is None or report["event"] == event:
                    return report

    async def reports(self) -> AsyncIterator[dict]:
        """Every report until the child exits."""
        while (report := await self._reports.get()) is not None:
            yield report
        self._reports.put_nowait(None)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole process group (SIGKILL: the `kill -9` of a fault demo)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    async def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it exits."""
        async with asyncio.timeout(timeout):
            await _exited(self.process)
        returncode = self.process.wait()
        await self._finish()
        return returncode

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (the child closes its connections), then SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                return await self.wait(timeout)
            except TimeoutError:
                self.kill(signal.SIGKILL)
        return await self.wait()

    async def _finish(self) -> None:
        self.kill(signal.SIGKILL)  # anything the child left behind in its group
        _living.discard(self)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


async def _exited(process: subprocess.Popen) -> None:
    """Return when the process has exited: a pidfd becomes readable then (Linux), else poll."""
    if process.poll() is not None:
        return
    if not hasattr(os, "pidfd_open"):  # not Linux: an exit status has no file descriptor
        await asyncio.to_thread(process.wait)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    pidfd = os.pidfd_open(process.pid)
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def start(
    module: str,
    *args: str,
    name: str | None = None,
    wait_ready: bool = True,
    timeout: float = READY_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> Child:
    """Start `python -m module args`; unless `wait_ready=False`, wait for its "ready" report."""
    name = name or " ".join([module, *args[:1]])
    read_fd, write_fd = os.pipe()
    log_fd, log_path = tempfile.mkstemp(prefix="patterns-", suffix=".log")
    argv = [sys.executable, "-m", __name__, module, *args]
    child_env = os.environ | (env or {})
    child_env |= {REPORT_FD: str(write_fd), PARENT_PID: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), child_env.get("PYTHONPATH")])
    )
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=child_env,
            cwd=ROOT,
        )
    finally:
        os.close(write_fd)
        os.close(log_fd)
    child = Child(name, argv, process, Path(log_path))
    _living.add(child)
    child._pump = asyncio.create_task(child._read_reports(read_fd))
    if wait_ready:
        try:
            child.ready = await child.next_report("ready", timeout=timeout)
        except BaseException as error:
            await child.stop()
            if isinstance(error, TimeoutError):
                raise ChildFailed(
                    f"{name} was not ready within {timeout:g} s; its log:\n{child.log()}"
                ) from None
            raise
    return child


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[list[Child]]:
    """A scope for children: those appended to the list are stopped when it ends, however."""
    started: list[Child] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(child.stop() for child in started))


async def together(*awaitables: Awaitable[T]) -> list[T]:
    """Await all, but fail at once with the first error (a child that died), not after the rest.

    asyncio.gather would wait for a receiver whose sender is already dead.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(a)) for a in awaitables]
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def stop_all() -> None:
    """Stop every child this process started that is still running."""
    await asyncio.gather(*(child.stop() for child in list(_living)))


@atexit.register
def _stop_all_at_exit() -> None:
    for child in list(_living):
        child.kill(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in list(_living):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
        child.kill(signal.SIGKILL)
        child.process.wait()


def free_port() -> int:
    """A free loopback TCP port, for a ZeroMQ PUB socket its peers must know in advance.

    Taken below the kernel's ephemeral range (32768-60999 on Linux): peers connect to it
    before it is bound, and a client that keeps connecting to an unbound ephemeral port can
    be given that very port as its own source port and connect to itself.
    """
    while True:
        port = random.randrange(20_000, 32_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


# ---- the child's side -------------------------------------------------------------------


def report(event: str, **fields: Any) -> None:
    """Tell the parent something: "ready", live "stats", a "result". In a terminal, print it."""
    line = json.dumps({"event": event, **fields}, separators=(",", ":"))
    fd = os.environ.get(REPORT_FD)
    if fd is None:
        print(line, flush=True)
    else:
        os.write(int(fd), line.encode() + b"\n")


ALLOCATOR_WARM_UP = 1 << 20  # bytes: more than asyncio's read buffer


def run(main: Coroutine[Any, Any, Any]) -> None:
    """`asyncio.run(main)`, where SIGTERM and Ctrl-C cancel `main` so its `finally` runs."""
    # asyncio reads a socket into a fresh 256 KiB buffer every time. glibc's malloc maps a
    # block that big with mmap (a system call, page faults, then munmap) until it has seen
    # one such block freed; then it serves them from its heap. Free one now, not by chance
    # later: an AMQP worker's empty tasks ran 2-6% faster (4 rounds, side by side).
    bytearray(ALLOCATOR_WARM_UP)

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main

    asyncio.run(cancellable())


def _launch(argv: list[str]) -> None:
    """Run `python -m argv[0] argv[1:]` as a child that dies with its parent."""
    if sys.platform == "linux":  # elsewhere only the atexit hook and stop() reap children
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != int(os.environ[PARENT_PID]):
            sys.exit("the parent exited before this child started")
    try:
        found = importlib.util.find_spec(argv[0]) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        sys.exit(f"No module named {argv[0]!r}")
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _launch(sys.argv[1:])
