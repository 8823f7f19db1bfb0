"""Loopback aiohttp servers (the simulator, the replay server): binding, URL, shutdown, and a background loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

from aiohttp import web

CLOSE_TIMEOUT = 2.0  # seconds to close a socket or shut the server down


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LoopbackServer:
    """An aiohttp application served on one host and port (0: a free one), its open WebSockets closed on stop."""

    stop_message = b"server stopping"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._open_sockets: set[web.WebSocketResponse] = set()

    @property
    def port(self) -> int:
        """The bound port (after ``start()``)."""
        if self._port is None:
            raise RuntimeError(f"the {type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL to give a client, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _serve(self, app: web.Application) -> None:
        """Bind the application and start serving it."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT)
        await runner.setup()
        await web.TCPSite(runner, self.host, self._requested_port).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close open sockets (1001) and stop serving."""
        for ws in list(self._open_sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=self.stop_message), CLOSE_TIMEOUT)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.contextmanager
def running_in_thread[S: Startable](server: S, name: str, timeout: float = 10.0) -> Iterator[S]:
    """Yield the server once started on a background loop; stop it and the loop on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name=name, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=timeout)
        yield server
    finally:
        try:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=timeout)
