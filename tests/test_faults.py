import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from patterns import config
from patterns.faults import Proxy


async def test_proxy_forwards_then_cuts_then_resumes_on_the_same_port() -> None:
    async with Proxy(config.REDIS_URL) as proxy:
        assert proxy.url.startswith("redis://127.0.0.1:") and str(proxy.port) in proxy.url
        client = aioredis.from_url(proxy.url, socket_timeout=2, retry_on_error=[])
        try:
            assert await client.ping()
            port = proxy.port
            await proxy.cut()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            await proxy.resume()
            assert proxy.port == port
            assert await client.ping()  # a new connection through the same address
        finally:
            await client.aclose()


async def test_proxy_keeps_credentials_in_the_url() -> None:
    async with Proxy(config.AMQP_URL) as proxy:
        assert proxy.url == f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


async def test_a_cut_is_seen_by_a_blocked_reader_at_once() -> None:
    async with Proxy(config.REDIS_URL) as proxy:
        client = aioredis.from_url(proxy.url, socket_timeout=30, retry_on_error=[])
        try:
            blocked = asyncio.create_task(client.blpop(["test:faults:never"], timeout=20))
            await asyncio.sleep(0.2)
            await proxy.cut()
            with pytest.raises(redis.exceptions.ConnectionError):
                await asyncio.wait_for(blocked, 5)
        finally:
            await client.aclose()
