"""Request/reply over a child process's stdin and stdout: one JSON object per line.

The book's first example: the requester starts the replier as a child process and talks
to it over a channel that only carries one-way messages (Node's IPC channel there, the
child's standard input and output here). The correlation identifier turns that channel
into request/reply with many requests in flight. The pipe also says when the replier
dies: its stdout ends, so every pending request fails at once.

    async with pipe.requester() as requester:
        print(await requester.request({"a": 1, "b": 2}))      # {'sum': 3}

The replier reads requests line by line and writes each reply when it is ready, so a
quick answer overtakes a slow one; a line it cannot read gets an error reply. It stops
when its stdin ends (the requester is gone). From a terminal, type requests at it:

    python -m patterns.reqrep replier --transport stdio
"""

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from subprocess import PIPE
from typing import Any

from patterns.messages import MalformedMessage
from patterns.processes import REPORT_FD
from patterns.reqrep import wire
from patterns.reqrep.correlation import DEFAULT_TIMEOUT_S, ChannelClosed, Requester
from patterns.reqrep.handler import Handler, ReplierCounts, respond

REPLIER = (sys.executable, "-m", "patterns.reqrep", "replier", "--transport", "stdio")
CHUNK = 1 << 16
EXIT_TIMEOUT_S = 2.0


class PipeRequester(Requester):
    transport = "pipe"

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.process: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._exited = asyncio.Event()
        self._lines = wire.Lines()

    async def start(self, command: Sequence[str], env: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self.process, _ = await loop.subprocess_exec(
            lambda: _Pipes(self), *command, stdin=PIPE, stdout=PIPE, stderr=None, env=env
        )
        self._stdin = self.process.get_pipe_transport(0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.get_pid()

    def kill(self) -> None:
        """SIGKILL the replier (the fault demos' `kill -9`)."""
        assert self.process is not None
        self.process.kill()

    async def _send(
        self, request_id: str, data: Any, timeout: float, future: asyncio.Future
    ) -> None:
        assert self._stdin is not None
        if self._stdin.is_closing():
            raise ChannelClosed(request_id, self.closed or f"the replier (pid={self.pid}) is gone")
        # never waits: what the pipe cannot take yet is buffered, at most `max_pending` requests
        self._stdin.write(wire.request(request_id, data) + b"\n")

    def _receive(self, chunk: bytes) -> None:
        for line in self._lines.feed(chunk):  # every complete line, without awaiting
            try:
                request_id, data, error = wire.read_reply(line)
            except MalformedMessage as problem:
                self._malformed(line, str(problem))
                continue
            self._settle(request_id, data, error)

    async def _replier_gone(self) -> None:
        """Its stdout ended: every reply it wrote has been read; say how it ended."""
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._exited.wait()
        except TimeoutError:
            self._close(f"the replier (pid={self.pid}) closed its stdout")
        else:
            assert self.process is not None
            code = self.process.get_returncode()
            self._close(f"the replier (pid={self.pid}) exited with code {code}")

    async def aclose(self) -> None:
        """Close the replier's stdin (it exits), wait for it, kill it if it does not."""
        self._close("the requester was closed")
        if self.process is None:
            return
        if self._stdin is not None:
            self._stdin.close()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._exited.wait()
        except TimeoutError:
            self.process.kill()
            await self._exited.wait()
        self.process.close()


class _Pipes(asyncio.SubprocessProtocol):
    """The replier's pipes, as callbacks: what it writes is matched as soon as it arrives."""

    def __init__(self, requester: PipeRequester) -> None:
        self.requester = requester
        self.ending: asyncio.Task | None = None

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.requester._receive(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.ending = asyncio.create_task(self.requester._replier_gone())

    def process_exited(self) -> None:
        self.requester._exited.set()


@contextlib.asynccontextmanager
async def requester(
    command: Sequence[str] = REPLIER, timeout: float = DEFAULT_TIMEOUT_S
) -> AsyncIterator[PipeRequester]:
    """Start the replier `command` as a child; a requester over its stdin/stdout."""
    env = {name: value for name, value in os.environ.items() if name != REPORT_FD}
    pipe_requester = PipeRequester(timeout)
    try:
        await pipe_requester.start(command, env)
        yield pipe_requester
    finally:
        await pipe_requester.aclose()


# ---- the replier: python -m patterns.reqrep replier --transport stdio ------------------


async def serve(handler: Handler) -> None:
    """Answer each request line on stdin with a reply line on stdout, until stdin ends.

    It reports nothing: its stdout is the channel, and its requester reads replies there.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    counts, lines, waiting = ReplierCounts(), wire.Lines(), set[asyncio.Task]()

    async def reply_later(reply: Any) -> None:
        writer.write(await reply + b"\n")

    try:
        while chunk := await reader.read(CHUNK):
            ready = []
            for line in lines.feed(chunk):
                reply = respond(handler, line, counts)
                if isinstance(reply, bytes):
                    ready.append(reply)
                else:  # the handler answers later: a task writes it then
                    task = asyncio.create_task(reply_later(reply))
                    waiting.add(task)
                    task.add_done_callback(waiting.discard)
            if ready:
                writer.write(b"\n".join(ready) + b"\n")  # one write for the whole batch
            await writer.drain()  # stop reading while the requester does not read its replies
    finally:  # the requester is gone: nobody waits for the answers in hand
        for task in waiting:
            task.cancel()
