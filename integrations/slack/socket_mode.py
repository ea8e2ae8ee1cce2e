"""Slack over Socket Mode: the bot opens a WebSocket to Slack instead of receiving requests.

With an app-level token (`xapp-...`, scope `connections:write`) the same bolt app that serves
`POST /slack/events` receives its envelopes over a socket: `apps.connections.open` returns the
socket's URL, Slack sends `hello` and then one envelope per event, command or interaction, and
bolt acknowledges each by its `envelope_id` once the handler has run. No public request URL is
needed, which is what a server behind a firewall wants.

The connection runs on a loop of its own, on its own thread: slack_sdk's client reconnects and
pings forever, and that must neither wait behind sessions' work nor keep it waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

log = logging.getLogger("nightshift.slack")
APP_TOKEN_PREFIX = "xapp-"  # noqa: S105 (a token prefix, not a secret)


class SocketModeConnection:
    """Connects `app` to Slack over Socket Mode on `start`, until `close`."""

    def __init__(self, app: AsyncApp, app_token: str, *, ping_interval: float = 10.0) -> None:
        if not app_token.startswith(APP_TOKEN_PREFIX):
            raise ValueError(f"a Socket Mode token starts with {APP_TOKEN_PREFIX!r}")
        self.app = app
        self._token = app_token
        self._ping_interval = ping_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: AsyncSocketModeHandler | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def connected(self) -> bool:
        """A socket is open (slack_sdk reconnects on its own when one drops)."""
        handler = self._handler
        session = handler.client.current_session if handler is not None else None
        return session is not None and not session.closed

    def start(self) -> None:
        """Open the connection in the background; a failure to connect is logged and retried
        by slack_sdk every ping interval."""
        if self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="slack-socket-mode", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._open())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _open(self) -> None:
        # slack_sdk's client schedules its tasks on the running loop as it is built.
        self._handler = AsyncSocketModeHandler(
            self.app, self._token, ping_interval=self._ping_interval
        )
        self._connecting = asyncio.ensure_future(self._connect(self._handler))

    async def _connect(self, handler: AsyncSocketModeHandler) -> None:
        try:
            # slack_sdk leaves these untyped; the variable says what they are.
            connect: Callable[[], Awaitable[None]] = handler.connect_async
            await connect()
        except Exception:
            log.exception("Slack Socket Mode: could not connect")

    def close(self, timeout: float = 10.0) -> None:
        """Close the socket and stop the loop."""
        loop, handler, thread = self._loop, self._handler, self._thread
        if loop is None or thread is None:
            return
        if handler is not None and not loop.is_closed():
            close: Callable[[], Coroutine[Any, Any, None]] = handler.close_async
            future = asyncio.run_coroutine_threadsafe(close(), loop)
            try:
                future.result(timeout)
            except Exception:
                log.exception("Slack Socket Mode: closing the connection failed")
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._loop = self._handler = None
