"""A new request from Slack: which repository (or a picker), then the session and its status
message in the thread."""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import ServiceError
from app.models import User
from app.overload import Intake
from app.services.classifier import RepoClassifier
from app.services.images import Images
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.services.slack.data import SlackDirectory
from app.services.slack.links import SlackLinks
from app.services.slack.out import SlackOut
from app.services.slack.status import StatusUpdater
from app.slack_tables import SlackRequest, SlackThread
from integrations.slack.blocks import repo_picker
from integrations.slack.bolt import MessageEvent, RepoPick
from integrations.slack.client import error_code
from integrations.slack.text import to_plain

log = logging.getLogger("nightshift.slack")

CONTEXT_MESSAGES = 30
CONTEXT_CHARS = 4000


def thread_id(thread: SlackThread) -> int:
    assert thread.id is not None
    return thread.id


def request_id(request: SlackRequest) -> int:
    assert request.id is not None
    return request.id


class RequestFlow:
    def __init__(
        self,
        directory: SlackDirectory,
        links: SlackLinks,
        sessions: Sessions,
        repos: Repos,
        classifier: RepoClassifier,
        updater: StatusUpdater,
        client: AsyncWebClient,
        out: SlackOut,
        images: Images,
        intake: Intake,
    ) -> None:
        self.directory = directory
        self.links = links
        self.sessions = sessions
        self.repos = repos
        self.classifier = classifier
        self.updater = updater
        self.client = client
        self.out = out
        self.images = images
        self.intake = intake
        """The server's backlog, which a new session takes a slot of like a POST does."""

    async def route(self, request: SlackRequest, user: User) -> None:
        """Pick the repository of a new request and start it, or ask which one."""
        thread = await asyncio.to_thread(
            self.directory.thread, request.channel_id, request.thread_ts
        )
        thread_repo = None
        if thread is not None:
            thread_repo = (await asyncio.to_thread(self.sessions.get, thread.session_id)).repo_name
        found = await self.classifier.classify(
            request.raw,
            request.text,
            context=request.context,
            channel_id=request.channel_id,
            thread_repo=thread_repo,
        )
        if found.error is not None:
            await asyncio.to_thread(
                self.directory.update_request,
                request_id(request),
                state="failed",
                error=found.error,
            )
            await self.out.say(
                request.channel_id, request.thread_ts, f"<@{request.slack_user_id}> {found.error}"
            )
            return
        if found.repo is None:
            await self.ask_for_repo(request, found.candidates)
            return
        await self.start_session(request, user, found.repo, found.how)

    async def ask_for_repo(self, request: SlackRequest, candidates: tuple[str, ...]) -> None:
        repos = {r.name: r for r in await asyncio.to_thread(self.repos.list)}
        ordered = [n for n in candidates if n in repos] + sorted(set(repos) - set(candidates))
        options = [(name, repos[name].description) for name in ordered]
        await asyncio.to_thread(
            self.directory.update_request, request_id(request), state="needs_repo"
        )
        text, blocks = repo_picker(
            request_id(request),
            request.slack_user_id,
            request.text,
            options,
            "I can't tell from the message, and I'd rather ask than guess.",
        )
        response = await self.client.chat_postMessage(
            channel=request.channel_id, thread_ts=request.thread_ts, text=text, blocks=blocks
        )
        await asyncio.to_thread(
            self.directory.update_request, request_id(request), picker_ts=str(response["ts"])
        )

    async def on_pick(self, pick: RepoPick) -> None:
        request = await asyncio.to_thread(self.directory.request, pick.request_id)
        if request is None:
            await self.out.ephemeral(pick.channel_id, pick.user_id, "That request is gone.")
            return
        await asyncio.to_thread(
            self.directory.touch_participant, request.channel_id, request.thread_ts, pick.user_id
        )
        if request.state != "needs_repo":
            where = f" on `{request.repo_name}`" if request.repo_name else ""
            await self.out.ephemeral(
                request.channel_id, pick.user_id, f"That request has already started{where}."
            )
            return
        try:
            await asyncio.to_thread(self.repos.get, pick.repo)
        except ServiceError as exc:
            await self.out.ephemeral(request.channel_id, pick.user_id, str(exc))
            return
        user = await asyncio.to_thread(self.links.user_for, request.slack_user_id)
        if user is None:
            await self.out.ephemeral(
                request.channel_id,
                pick.user_id,
                f"<@{request.slack_user_id}> is no longer connected to Nightshift.",
            )
            return
        if not await asyncio.to_thread(
            self.directory.claim_request, request_id(request), ("needs_repo",), "starting"
        ):
            await self.out.ephemeral(
                request.channel_id, pick.user_id, "Someone already picked a repository for that."
            )
            return
        await self.start_session(
            request,
            user,
            pick.repo,
            f"picked by <@{pick.user_id}>",
            status_ts=request.picker_ts or pick.message_ts or None,
        )

    async def start_session(
        self,
        request: SlackRequest,
        user: User,
        repo: str,
        how: str,
        status_ts: str | None = None,
    ) -> None:
        await self.warm(user, repo)
        prompt = request.text
        if request.context:
            prompt += f"\n\nEarlier in the Slack thread:\n{request.context}"
        try:
            busy = (request.channel_id, request.thread_ts, request.slack_user_id, "yours")
            async with self.intake.slot(lambda: self.out.busy(*busy)):
                session = await asyncio.to_thread(
                    self.sessions.create, user, repo, prompt, None, "slack", request.model
                )
        except ServiceError as exc:
            await asyncio.to_thread(
                self.directory.update_request, request_id(request), state="failed", error=str(exc)
            )
            await self.out.say(
                request.channel_id,
                request.thread_ts,
                f"<@{request.slack_user_id}> I could not start: {exc}",
            )
            return
        await asyncio.to_thread(
            self.directory.update_request,
            request_id(request),
            state="started",
            session_id=session.id,
            repo_name=repo,
        )
        thread = await asyncio.to_thread(
            self.directory.bind_thread,
            request.channel_id,
            request.thread_ts,
            session.id,
            request.slack_user_id,
            how,
            status_ts,
        )
        try:
            await self.updater.post(thread)
        except SlackApiError as exc:
            log.warning("posting the status message of %s failed: %s", session.id, error_code(exc))
            # The updater tries again with the session's next event.
            self.updater.track(session.id, thread_id(thread))
            self.updater.poke(thread_id(thread))

    async def warm(self, user: User, repo: str) -> None:
        """Reserve a warm sandbox of `repo` for `user`, as the web prompt box does while they
        type: the session claims it. A failure only loses the head start, never the request."""
        try:
            await asyncio.to_thread(self.images.warm, user, repo)
        except Exception:
            log.warning("warming %s for a Slack request failed", repo, exc_info=True)

    async def thread_context(self, msg: MessageEvent) -> str:
        """Earlier messages of the thread a mention was made in, oldest first."""
        try:
            response = await self.client.conversations_replies(
                channel=msg.channel, ts=msg.root_ts, limit=CONTEXT_MESSAGES
            )
        except SlackApiError as exc:
            log.warning("reading thread %s failed: %s", msg.root_ts, error_code(exc))
            return ""
        lines = []
        for item in response.get("messages") or []:
            if item.get("ts") == msg.ts or item.get("bot_id") or not item.get("text"):
                continue
            text = to_plain(str(item["text"]))
            if text:
                lines.append(f"@{item.get('user', 'someone')}: {text}")
        context = "\n".join(lines)
        return context[-CONTEXT_CHARS:]
