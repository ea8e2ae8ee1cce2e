"""The status message: one message per session in its Slack thread, kept up to date.

A hub handler sees every persisted event; for a session with a Slack thread it schedules an
update of that thread's status message on the executor, at most one per `interval` per
message. An update renders the session as it is *now* (index row and stored events), so any
number of events coalesce into one edit and the last edit always shows the final state: the
pull request, or why the session failed or stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import NotFound
from app.services.sessions import Sessions
from app.services.slack.data import SlackDirectory
from app.slack_tables import SlackThread
from integrations.slack.blocks import StatusView, status_message
from integrations.slack.client import error_code
from workers.agent.tools import describe_call
from workers.events import (
    ErrorRaised,
    Event,
    Notice,
    PromptFinished,
    PromptStarted,
    PrOpened,
    PrStateChanged,
    SandboxReady,
    StatusChanged,
    ToolCalled,
)
from workers.executor import InProcessExecutor

log = logging.getLogger("nightshift.slack.status")

TRIGGERS = frozenset(
    {
        "status",
        "prompt_queued",
        "prompt_started",
        "prompt_finished",
        "sandbox_ready",
        "tool_call",
        "commit_created",
        "branch_pushed",
        "pr_opened",
        "pr_state",
        "error",
        "child_spawned",
        "notice",
    }
)
_GONE = frozenset({"message_not_found", "channel_not_found", "cant_update_message", "is_archived"})
RECENT_EVENTS = 400


@dataclass
class _Slot:
    """Rate-limit state of one status message."""

    last_sent: float = -1e9
    scheduled: bool = False
    sending: asyncio.Lock | None = None
    updates: int = 0


@dataclass
class _Tracked:
    threads: set[int] = field(default_factory=set)


class StatusUpdater:
    def __init__(
        self,
        directory: SlackDirectory,
        sessions: Sessions,
        client: AsyncWebClient,
        executor: InProcessExecutor,
        *,
        interval: float,
    ) -> None:
        self.directory = directory
        self.sessions = sessions
        self.client = client
        self.executor = executor
        self.interval = interval
        self._tracked: dict[str, _Tracked] = {}
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ which messages to keep updated

    def track(self, session_id: str, thread_id: int) -> None:
        with self._lock:
            self._tracked.setdefault(session_id, _Tracked()).threads.add(thread_id)

    def tracked(self, session_id: str) -> set[int]:
        with self._lock:
            entry = self._tracked.get(session_id)
            return set(entry.threads) if entry else set()

    def load(self) -> None:
        """After a start: follow every thread whose message may still change, and bring the
        ones that lag behind their session up to date."""
        for thread, _status in self.directory.open_threads():
            assert thread.id is not None
            self.track(thread.session_id, thread.id)
            self.poke(thread.id)

    def on_event(self, session_id: str, event: Event) -> None:
        """Hub handler: runs in the publisher's thread, so it only schedules."""
        if event.type not in TRIGGERS:
            return
        threads = self.tracked(session_id)
        if threads:
            for thread_id in threads:
                self.poke(thread_id)
        elif (isinstance(event, StatusChanged) and event.status == "queued") or isinstance(
            event, PrOpened | PrStateChanged | Notice
        ):
            # A session revived from elsewhere (web, API), or whose PR was merged or closed,
            # whose thread this process no longer follows.
            self.executor.submit(lambda: self._adopt(session_id))

    async def _adopt(self, session_id: str) -> None:
        for thread in await asyncio.to_thread(self.directory.threads_of, session_id):
            assert thread.id is not None
            if thread.status_ts is None:
                continue  # still being posted by whoever bound it
            self.track(session_id, thread.id)
            self.poke(thread.id)

    # ------------------------------------------------------------ updates, rate-limited

    def poke(self, thread_id: int) -> None:
        """Schedule an update of this thread's status message (coalesced, rate-limited)."""
        with self._lock:
            slot = self._slots.setdefault(thread_id, _Slot())
            if slot.scheduled:
                return
            slot.scheduled = True
            delay = max(0.0, slot.last_sent + self.interval - time.monotonic())
        self.executor.submit(lambda: self._flush(thread_id, delay))

    async def _flush(self, thread_id: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        with self._lock:
            slot = self._slots.setdefault(thread_id, _Slot())
            if slot.sending is None:
                slot.sending = asyncio.Lock()
            sending = slot.sending
        async with sending:
            # One edit at a time per message, and `interval` from the end of the last one.
            while (wait := slot.last_sent + self.interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            with self._lock:
                slot.scheduled = False  # events from here on schedule the next edit
            sent = True
            try:
                thread = await asyncio.to_thread(self.directory.thread_by_id, thread_id)
                if thread is None:
                    return
                if thread.status_ts is None:
                    # Posting it failed earlier (Slack down, rate limits): try again now.
                    try:
                        await self.post(thread)
                    except (SlackApiError, NotFound) as exc:
                        log.warning(
                            "posting the status message of %s failed: %s", thread.session_id, exc
                        )
                    return
                sent = await self._send(thread)
            finally:
                if sent:
                    with self._lock:
                        slot.last_sent = time.monotonic()

    async def _send(self, thread: SlackThread) -> bool:
        """Edit the message to show the session as it is now; False when nothing changed."""
        assert thread.id is not None and thread.status_ts is not None
        try:
            view = await asyncio.to_thread(self.view, thread)
        except NotFound:
            return False
        text, blocks = status_message(view)
        rendered = _fingerprint(view.status, blocks)
        if rendered == thread.rendered:
            return False
        try:
            await self.client.chat_update(
                channel=thread.channel_id, ts=thread.status_ts, text=text, blocks=blocks
            )
        except SlackApiError as exc:
            code = error_code(exc)
            log.warning("updating the status message of %s failed: %s", thread.session_id, code)
            if code in _GONE:
                with self._lock:
                    entry = self._tracked.get(thread.session_id)
                    if entry is not None:
                        entry.threads.discard(thread.id)
                await asyncio.to_thread(
                    self.directory.set_rendered, thread.id, f"{view.status}:gone"
                )
            return True
        with self._lock:
            self._slots.setdefault(thread.id, _Slot()).updates += 1
        await asyncio.to_thread(self.directory.set_rendered, thread.id, rendered)
        return True

    async def post(self, thread: SlackThread) -> str | None:
        """Post the status message in the thread (or turn the picker message into it); returns
        its ts."""
        assert thread.id is not None
        view = await asyncio.to_thread(self.view, thread)
        text, blocks = status_message(view)
        if thread.status_ts is not None:
            await self.client.chat_update(
                channel=thread.channel_id, ts=thread.status_ts, text=text, blocks=blocks
            )
            ts = thread.status_ts
        else:
            response = await self.client.chat_postMessage(
                channel=thread.channel_id,
                thread_ts=thread.thread_ts,
                text=text,
                blocks=blocks,
                unfurl_links=False,
            )
            ts = str(response["ts"])
            await asyncio.to_thread(self.directory.set_status_ts, thread.id, ts)
        with self._lock:
            self._slots.setdefault(thread.id, _Slot()).last_sent = time.monotonic()
        await asyncio.to_thread(
            self.directory.set_rendered, thread.id, _fingerprint(view.status, blocks)
        )
        self.track(thread.session_id, thread.id)
        # Events may have come in while the message was being posted.
        self.poke(thread.id)
        return ts

    def updates(self, thread_id: int) -> int:
        with self._lock:
            slot = self._slots.get(thread_id)
            return slot.updates if slot else 0

    # ------------------------------------------------------------ what the message shows

    def view(self, thread: SlackThread) -> StatusView:
        row = self.sessions.get(thread.session_id)
        store = self.sessions.files.get(row.id)
        last = store.last_event_id()
        activity: str | None = None
        failure: str | None = None
        summary: str | None = None
        notice: Notice | None = None
        origins: dict[int | None, Notice] = {}  # where each follow-up came from
        running: int | None = None
        for event in store.events(max(0, last - RECENT_EVENTS), RECENT_EVENTS):
            if isinstance(event, PromptStarted):
                activity, failure, summary, notice = "reading the request", None, None, None
                running = event.prompt_id
            elif isinstance(event, Notice) and event.follow_up:
                origins[event.prompt_id] = event
            elif isinstance(event, Notice):
                notice = event
            elif isinstance(event, StatusChanged):
                if event.status == "starting":
                    activity = "starting a sandbox"
                if event.status in ("failed", "stopped") and event.reason:
                    failure = failure or event.reason
            elif isinstance(event, SandboxReady):
                activity = f"sandbox ready ({event.mode}, {event.ms_since_prompt} ms)"
            elif isinstance(event, ToolCalled):
                activity = describe_call(event.name, event.arguments)
            elif isinstance(event, ErrorRaised):
                failure = event.message
            elif isinstance(event, PromptFinished):
                if event.outcome == "failed":
                    failure = failure or event.summary
                elif event.summary:
                    summary = event.summary
        return StatusView(
            session_id=row.id,
            url=f"{self.sessions.base_url}/sessions/{row.id}",
            repo=row.repo_name,
            status=row.status,
            title=row.title,
            picked=thread.how,
            activity=activity,
            queued=store.pending_count(),
            pr_url=row.pr_url,
            pr_number=row.pr_number,
            pr_state=row.pr_state,
            branch=row.branch if row.head_sha else None,
            summary=summary,
            failure=failure,
            notice=notice.message if notice else None,
            notice_link=notice.link if notice else None,
            origin=origins[running].message if running in origins else None,
            origin_link=origins[running].link if running in origins else None,
            participants=tuple(self.directory.participants(thread.channel_id, thread.thread_ts)),
        )


def _fingerprint(status: str, blocks: list[dict[str, object]]) -> str:
    digest = hashlib.sha256(json.dumps(blocks, sort_keys=True).encode()).hexdigest()[:16]
    return f"{status}:{digest}"
