"""Faults on demand: a TCP proxy between clients and a broker that can be cut, a Redis
server of our own that can be restarted, with or without its data, and a RabbitMQ node of
our own that can be crashed and started again.

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
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path
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

    async def kill(self) -> None:
        """SIGKILL, as a crash would: Redis writes nothing more, and a child it forked (an
        append-only file being rewritten) dies with it."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: start_new_session
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


class NodeUnavailable(RuntimeError):
    """No RabbitMQ node of our own can start here: the message says why."""


class RabbitNode:
    """A RabbitMQ node of our own on free loopback ports, to crash and start again: what must
    not be done to the shared one.

        node = RabbitNode()
        await node.start()            # AMQP_URL=node.url for the processes that should use it
        await node.kill()             # SIGKILL: a crash, nothing flushed
        await node.start()            # the same node, data directory and port
        await node.stop()             # SIGTERM, then its files are removed

    It runs the `rabbitmq-server` this machine has, with a data directory, a config file and
    no plugins of its own; as root, the packaged script runs it as the `rabbitmq` user, who
    gets the directory. Where a node cannot start here (not installed, not root nor that
    user), `start` raises `NodeUnavailable` saying why, with the end of the node's log.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()  # Erlang distribution, bound to loopback too
        self.name = f"patterns-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.workdir = ""
        self._process: asyncio.subprocess.Process | None = None

    def _environment(self) -> dict[str, str]:
        here = self.workdir
        return os.environ | {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": f"{here}/mnesia",
            "RABBITMQ_LOG_BASE": f"{here}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{here}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{here}/rabbitmq",  # .conf is added
            "RABBITMQ_PID_FILE": f"{here}/pid",
        }

    def _prepare(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="patterns-rabbitmq-")
        here = Path(self.workdir)
        (here / "mnesia").mkdir()
        (here / "log").mkdir()
        (here / "enabled_plugins").write_text("[].\n")
        (here / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        if os.getuid() == 0:  # the packaged script runs the node as rabbitmq
            try:
                user = pwd.getpwnam("rabbitmq")
            except KeyError:
                raise NodeUnavailable("there is no rabbitmq user to run the node as") from None
            for path in [here, *here.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def log(self, lines: int = 5) -> str:
        """The end of the node's output: why it did not start."""
        try:
            text = (Path(self.workdir) / "log" / "output").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def start(self, timeout: float = 60.0) -> float:
        """Start the node and wait until it accepts AMQP connections; the seconds it took."""
        if shutil.which("rabbitmq-server") is None:
            raise NodeUnavailable("rabbitmq-server is not installed on this machine")
        if not self.workdir:
            self._prepare()
        (Path(self.workdir) / "pid").unlink(missing_ok=True)
        started = time.perf_counter()
        with open(Path(self.workdir) / "log" / "output", "ab") as output:  # noqa: ASYNC230 (a local file, opened once)
            self._process = process = await asyncio.create_subprocess_exec(
                "rabbitmq-server",
                env=self._environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if process.returncode is not None:
                        raise NodeUnavailable(
                            f"the RabbitMQ node exited before it was ready: {self.log()}"
                        )
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.1)
                        continue
                    writer.close()
                    return time.perf_counter() - started
        except TimeoutError:
            await self.kill()
            raise NodeUnavailable(
                f"the RabbitMQ node did not accept connections within {timeout:g} s"
            ) from None

    def _pid(self) -> int | None:
        try:
            return int((Path(self.workdir) / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    async def kill(self, how: signal.Signals = signal.SIGKILL) -> None:
        """Stop the node (SIGKILL: a crash) and wait until it has gone."""
        process, self._process = self._process, None
        if process is None:
            return
        pid = self._pid()  # the Erlang VM's; the script started it as another user
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, how) if pid else os.killpg(process.pid, how)
        try:
            async with asyncio.timeout(30):
                await process.wait()
                while pid and _alive(pid):  # noqa: ASYNC110 (another user's process: no event to wait on)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """SIGTERM, as an operator's stop would; then its files are removed."""
        try:
            await self.kill(signal.SIGTERM)
        finally:
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        return True
    return True
