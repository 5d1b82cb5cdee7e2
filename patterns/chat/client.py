"""A WebSocket chat client for notebooks and tests: what a browser tab does, in Python.

async with ChatClient("http://127.0.0.1:8081/") as alice:
    await alice.send("hello")
    print(await alice.wait_for(1))   # the first message received
"""

import asyncio

import aiohttp


class ChatClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[str] = []
        self.close_code: int | None = None
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> "ChatClient":
        self._session = aiohttp.ClientSession()
        try:
            self.ws = await self._session.ws_connect(self.url, max_msg_size=0)
        except BaseException:
            await self._session.close()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.ws.close()
        await self._reader
        await self._session.close()

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                async with self._arrived:
                    self.received.append(frame.data)
                    self._arrived.notify_all()
        async with self._arrived:
            self.close_code = self.ws.close_code
            self._arrived.notify_all()

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        """The first `count` messages received; TimeoutError if they do not come."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(
                lambda: len(self.received) >= count or self.close_code is not None
            )
        if len(self.received) < count:
            raise ConnectionError(f"closed with {self.close_code} after {self.received}")
        return self.received[:count]

    async def wait_for_text(self, text: str, timeout: float = 10.0) -> None:
        """Until `text` has been received; TimeoutError if it does not come."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: text in self.received)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """The close code the server closed this client with."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.close_code is not None)
        return self.close_code
