"""Faults on demand: a TCP proxy between clients and a broker that can be cut, and a Redis
server of our own that can be restarted, with or without its data.

    async with Proxy(config.REDIS_URL) as proxy:
        worker = await processes.start(..., env={"REDIS_URL": proxy.url})
        await proxy.cut()      # every connection through it drops; new ones are refused
        ...
        await proxy.resume()   # connections are accepted again: clients must reconnect

To a client, a cut looks like the broker going away (its TCP connections reset, new
connects refused) while the real broker, and everyone else using it, goes on. What a
broker keeps for a connection only (exclusive queues, Pub/Sub subscriptions, unacked
deliveries) is dropped exactly as it would be for a crashed client or a restarted broker.
"""

import asyncio
import contextlib
import shutil
import socket
import tempfile
from urllib.parse import urlsplit, urlunsplit

from patterns.processes import free_port


class Proxy:
    """Forward 127.0.0.1:<free port> to the host:port of `url`, until cut."""

    def __init__(self, url: str) -> None:
        target = urlsplit(url)
        self.target_url = url
        self.target = (target.hostname or "127.0.0.1", target.port or 0)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        """The target URL with its host and port replaced by the proxy's."""
        parts = urlsplit(self.target_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            self._connections.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(client_r, broker_w), self._pipe(broker_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_w, broker_w):
                with contextlib.suppress(OSError):
                    writer.transport.abort()  # a reset, as a crashed peer would leave
            self._connections.discard(task)

    async def resume(self) -> None:
        """Accept connections (again), on the same port."""
        if self._server is not None:
            return
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.port = listener.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=listener)

    async def cut(self) -> None:
        """Drop every connection and refuse new ones until `resume`."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def __aenter__(self) -> "Proxy":
        await self.resume()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()


class RedisServer:
    """A Redis server of our own on a free loopback port, to restart or to lose: what must
    not be done to the shared one.

        async with RedisServer(appendonly=True) as server:
            ...  # REDIS_URL=server.url for the processes that should use it
            await server.restart()  # stopped, then started again on the same port

    With `appendonly=False` a restart loses everything (no snapshot is kept either); with
    `appendonly=True` Redis reloads its append-only file, as a production Redis would.
    """

    READY = b"Ready to accept connections"

    def __init__(self, appendonly: bool = False, *settings: str) -> None:
        self.appendonly = appendonly
        self.settings = settings  # more "--name value" pairs for redis-server
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = ""
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task | None = None

    async def start(self, timeout: float = 10.0) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError(
                "redis-server is not installed (e.g. `sudo apt install redis-server`)"
            )
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="patterns-redis-")
        persistence = ["--appendonly", "yes" if self.appendonly else "no", "--save", ""]
        self._process = process = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *persistence, "--dir", self.workdir, *self.settings,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert process.stdout is not None
        async with asyncio.timeout(timeout):  # the server's own word that it is ready
            while self.READY not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited before it was ready"
                    )
        self._drain = asyncio.create_task(process.stdout.read())  # its log must not fill the pipe

    async def stop(self) -> None:
        """SIGTERM, as a restart by an operator would (Redis flushes its append-only file)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def restart(self, down_s: float = 0.0) -> None:
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> "RedisServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
