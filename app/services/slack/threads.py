"""What a message in a session's Slack thread does to the session: stop it, or queue a
follow-up prompt (after the author is linked)."""

from __future__ import annotations

import asyncio

from app.errors import ServiceError
from app.models import User
from app.overload import Intake
from app.services.classifier import resolve
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.services.slack.data import SlackDirectory
from app.services.slack.invites import LinkInvites
from app.services.slack.links import SlackLinks
from app.services.slack.out import SlackOut
from app.services.slack.requests import thread_id
from app.services.slack.status import StatusUpdater
from app.slack_tables import SlackThread
from integrations.slack.bolt import MessageEvent
from integrations.slack.text import repo_refs
from workers.events import ACTIVE_STATUSES


class SessionThreads:
    def __init__(
        self,
        sessions: Sessions,
        repos: Repos,
        directory: SlackDirectory,
        links: SlackLinks,
        invites: LinkInvites,
        updater: StatusUpdater,
        out: SlackOut,
        intake: Intake,
    ) -> None:
        self.sessions = sessions
        self.repos = repos
        self.directory = directory
        self.links = links
        self.invites = invites
        self.updater = updater
        self.out = out
        self.intake = intake
        """The server's backlog, which a follow-up takes a slot of like a POST does."""

    async def same_repo(self, raw: str, thread: SlackThread) -> bool:
        """A mention in a session's thread follows up unless it names another repository."""
        refs = repo_refs(raw)
        if not refs:
            return True
        session = await asyncio.to_thread(self.sessions.get, thread.session_id)
        repos = await asyncio.to_thread(self.repos.list)
        return any(
            (found := resolve(ref, repos)) is not None and found.name == session.repo_name
            for ref in refs
        )

    async def stop(self, thread: SlackThread, slack_user: str, team_id: str) -> None:
        user = await asyncio.to_thread(self.links.user_for, slack_user)
        if user is None:
            await self.invites.ask_to_link(
                slack_user,
                team_id,
                thread.channel_id,
                thread.thread_ts,
                "before you can stop a session",
            )
            return
        row = await asyncio.to_thread(self.sessions.get, thread.session_id)
        if row.status not in ACTIVE_STATUSES:
            await self.out.say(
                thread.channel_id,
                thread.thread_ts,
                f"<@{slack_user}> there is nothing to stop: the session has {row.status}.",
            )
            return
        await asyncio.to_thread(self.sessions.stop, user, thread.session_id)
        await self.out.say(
            thread.channel_id, thread.thread_ts, f"<@{slack_user}> stopped the session."
        )
        self.updater.poke(thread_id(thread))

    async def follow_up(
        self, thread: SlackThread, msg: MessageEvent, plain: str, team_id: str, event_id: str
    ) -> None:
        assert msg.user is not None
        user = await asyncio.to_thread(self.links.user_for, msg.user)
        if user is None:
            await asyncio.to_thread(
                self.directory.add_request,
                event_id=event_id,
                kind="follow_up",
                team_id=team_id,
                channel_id=msg.channel,
                thread_ts=thread.thread_ts,
                message_ts=msg.ts,
                slack_user_id=msg.user,
                raw=msg.text,
                text=plain,
                state="needs_link",
                session_id=thread.session_id,
            )
            await self.invites.ask_to_link(
                msg.user, team_id, msg.channel, thread.thread_ts, "before I can take follow-ups"
            )
            return
        await self.queue_follow_up(thread, user, plain, msg.user)

    async def queue_follow_up(
        self, thread: SlackThread, user: User, text: str, slack_user: str
    ) -> None:
        busy = (thread.channel_id, thread.thread_ts, slack_user, "your follow-up")
        try:
            async with self.intake.slot(lambda: self.out.busy(*busy)):
                prompt = await asyncio.to_thread(
                    self.sessions.add_prompt, user, thread.session_id, text, "slack"
                )
        except ServiceError as exc:
            await self.out.say(thread.channel_id, thread.thread_ts, f"<@{slack_user}> {exc}")
            return
        prompts = await asyncio.to_thread(self.sessions.prompts, thread.session_id)
        running = any(p.state == "running" for p in prompts)
        position = prompt.position or 0
        if not running and position == 0:
            where = "it starts now"
        elif position == 0:
            where = "it is next in the queue, after the prompt that is running"
        else:
            where = f"it is #{position + 1} in the queue, after the running prompt"
        await self.out.say(
            thread.channel_id,
            thread.thread_ts,
            f"<@{slack_user}> queued your follow-up (prompt {prompt.id}): {where}.",
        )
        self.updater.poke(thread_id(thread))
