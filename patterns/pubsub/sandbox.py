"""A private Redis server, for what must not be done to the shared one.

Configuring the shared Redis (CONFIG SET) would change it for everyone using it; a
demonstration that needs another configuration starts its own server on a free port,
with no persistence, and stops it afterwards:

    async with private_redis("client-output-buffer-limit", "pubsub 256kb 0 0") as url:
        ...  # REDIS_URL=url for the processes that should use it
"""

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator

from patterns.processes import free_port

READY_LINE = b"Ready to accept connections"


@contextlib.asynccontextmanager
async def private_redis(*settings: str, timeout: float = 10.0) -> AsyncIterator[str]:
    """Start `redis-server` on 127.0.0.1:<free port> with `settings` (name, value pairs);
    yield its URL once it says it is ready; stop it and delete its directory at the end."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (e.g. `sudo apt install redis-server`)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="patterns-redis-")
    options = [f"--{settings[i]}" if i % 2 == 0 else settings[i] for i in range(len(settings))]
    server = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no", "--dir", workdir, *options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        async with asyncio.timeout(timeout):  # the server's own word that it is ready
            while READY_LINE not in (line := await server.stdout.readline()):
                if not line:
                    raise RuntimeError(f"redis-server on port {port} exited before it was ready")
        drain = asyncio.create_task(server.stdout.read())  # its log must not fill the pipe
        yield f"redis://127.0.0.1:{port}/0"
        drain.cancel()
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 5)
            except TimeoutError:
                server.kill()
                await server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
