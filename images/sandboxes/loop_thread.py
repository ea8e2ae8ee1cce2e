"""An event loop on a thread of its own, for servers that must not depend on which loop
started them (the egress proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class LoopThread:
    """A loop served by a daemon thread; `stop` ends the loop's tasks, then closes it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        async def settle() -> None:
            # Tasks still running (a connection being served) end while their loop runs: left
            # pending, they would run their clean-up when collected, with no loop under them.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(settle(), self.loop).result(timeout + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
