"""Log lines written by a thread of their own, so that a blocked output never stops the API.

uvicorn writes its access log and its messages from the event loop, straight to stdout and
stderr. When nobody reads them (a terminal paused with Ctrl-S, a full pipe to a log shipper
that stalled, `nightshift serve | less` scrolled back) the write blocks, and with it every
request of the process. `defer_log_writes` gives those loggers one handler that only queues
the record; a writer thread formats and writes it with the handlers they had. Past
`capacity` queued records, new ones are dropped and counted, and the writer says how many
once it can write again: a stalled output costs log lines, never the API.

`nightshift serve` defers uvicorn's loggers; `nightshift worker` the loggers Celery sets up
(the root logger, which the runners' records reach, and Celery's task logger).

The record is formatted by the writer, not where it was logged: uvicorn's access formatter
reads the record's arguments itself. Redaction (`workers/redact.py`) happens when the record
is made, before it is queued.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Sequence

CAPACITY = 10_000
"""Records queued before new ones are dropped."""


class _Queued(logging.Handler):
    """Stands in for a logger's handlers: hands each record to the writer."""

    def __init__(self, writer: LogWriter, handlers: list[logging.Handler]) -> None:
        super().__init__(logging.NOTSET)
        self.writer = writer
        self.handlers = handlers

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.put(self.handlers, record)


class LogWriter:
    """One thread writing the records of the loggers given to `defer_log_writes`."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._start()
        atexit.register(self.stop)
        # A forked child (Celery's prefork pool) has no writer thread and may hold a lock the
        # parent's was holding: it starts afresh (what the parent had queued is the parent's).
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._records: queue.Queue[tuple[list[logging.Handler], logging.LogRecord] | None] = (
            queue.Queue(self.capacity)
        )
        self._lock = threading.Lock()
        self.dropped = 0
        """Records dropped because the queue was full (since the last note about it)."""
        self._thread = threading.Thread(target=self._run, name="nightshift-log", daemon=True)
        self._thread.start()

    def take(self, logger: logging.Logger) -> None:
        """Write `logger`'s records here, with the handlers it has now."""
        if logger.handlers and not any(isinstance(h, _Queued) for h in logger.handlers):
            handlers, logger.handlers = list(logger.handlers), []
            logger.addHandler(_Queued(self, handlers))

    @property
    def queued(self) -> int:
        """Records waiting to be written."""
        return self._records.qsize()

    def put(self, handlers: list[logging.Handler], record: logging.LogRecord) -> None:
        try:
            self._records.put_nowait((handlers, record))
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._records.get()
            if item is None:
                return
            handlers, record = item
            with self._lock:
                dropped, self.dropped = self.dropped, 0
            if dropped:
                note = logging.LogRecord(
                    record.name, logging.WARNING, __file__, 0,
                    "%d log records were dropped: the log's output was not being read",
                    (dropped,), None,
                )  # fmt: skip
                self._write(handlers, note)
            self._write(handlers, record)

    @staticmethod
    def _write(handlers: list[logging.Handler], record: logging.LogRecord) -> None:
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then stop."""
        if not self._thread.is_alive():
            return
        try:
            self._records.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


def defer_log_writes(names: Sequence[str], capacity: int = CAPACITY) -> LogWriter:
    """Move the handlers of the loggers `names` behind one writer thread (see above)."""
    writer = LogWriter(capacity)
    for name in names:
        writer.take(logging.getLogger(name))
    return writer
