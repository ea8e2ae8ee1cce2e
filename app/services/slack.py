"""The Slack bot: a mention becomes a session in its thread, replies become follow-ups, `stop`
or an :octagonal_sign: reaction stops it.

What Slack sends is recorded (de-duplicated on `event_id`) and acknowledged at once; the work
runs on the runtime's executor. Sessions are made as the Nightshift user the Slack user linked
to; an unlinked user gets a direct message with a one-time link, and the request waits for it.
The slash command and the modal live in `app/services/slack_commands.py`, the status message
in `app/services/slack_status.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from pydantic import ValidationError
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import ServiceError
from app.models import SlackThread, SlackUserLink, User
from app.services.classifier import RepoClassifier, resolve
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.services.slack_commands import SlackCommands
from app.services.slack_data import SlackDirectory
from app.services.slack_links import LINK_CODE_TTL_S, SlackLinks
from app.services.slack_out import SlackOut
from app.services.slack_requests import RequestFlow, request_id, thread_id
from app.services.slack_routing import SlackRouting
from app.services.slack_status import StatusUpdater
from app.settings import Settings
from integrations.llm import ModelSettings
from integrations.slack.blocks import link_invitation
from integrations.slack.bolt import (
    Envelope,
    MessageEvent,
    ModalSubmission,
    ReactionEvent,
    Reply,
    RepoPick,
    SlashCommand,
    build_app,
)
from integrations.slack.client import error_code, web_client
from integrations.slack.text import is_stop, mentions, repo_refs, split_new, to_plain
from workers.events import ACTIVE_STATUSES
from workers.executor import InProcessExecutor

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger("nightshift.slack")

STOP_REACTION = "octagonal_sign"
LINK_DM_INTERVAL_S = 600.0
"""An unlinked user gets at most one link message this often, however many times they ask."""
PRUNE_INTERVAL_S = 3600.0
RECOVER_INTERVAL_S = 30.0


class SlackBot:
    """Implements `integrations.slack.bolt.SlackSink` on top of the sessions service."""

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        repos: Repos,
        directory: SlackDirectory,
        links: SlackLinks,
        routing: SlackRouting,
        classifier: RepoClassifier,
        updater: StatusUpdater,
        client: AsyncWebClient,
        executor: InProcessExecutor,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.repos = repos
        self.directory = directory
        self.links = links
        self.routing = routing
        self.classifier = classifier
        self.updater = updater
        self.client = client
        self.executor = executor
        self.out = SlackOut(client)
        self.requests = RequestFlow(
            directory, links, sessions, repos, classifier, updater, client, self.out
        )
        self._pruned = time.monotonic()
        self.commands = SlackCommands(self)
        assert settings.slack_signing_secret
        self.app = build_app(client, settings.slack_signing_secret, self)
        self.handler = AsyncSlackRequestHandler(self.app)

    def link_url(self, code: str) -> str:
        return f"{self.settings.base_url}/slack/link/{code}"

    # ------------------------------------------------------------ lifecycle

    def start(self, periodic: Callable[[float, Callable[[], object], str], None]) -> None:
        self.executor.submit(lambda: asyncio.to_thread(self.updater.load))
        periodic(RECOVER_INTERVAL_S, self.recover, "slack-recover")

    def recover(self) -> int:
        """Handle events a dead process acknowledged but did not finish (and, now and then,
        forget old ones). Runs at start and every RECOVER_INTERVAL_S."""
        stranded = self.directory.stranded_events()
        if stranded:
            log.info("handling %d Slack event(s) a stopped process left", len(stranded))
        for event_id in stranded:
            self.executor.submit(partial(self._process, event_id))
        if time.monotonic() - self._pruned > PRUNE_INTERVAL_S:
            self._pruned = time.monotonic()
            self.directory.prune()
            self.links.prune()
        return len(stranded)

    # ------------------------------------------------------------ SlackSink (on the API's loop)

    async def event(self, envelope: Envelope) -> None:
        if not envelope.event_id:
            log.warning("a Slack %s event without event_id was ignored", envelope.type)
            return
        if not await self._worth_keeping(envelope):
            return
        payload = {"event": envelope.event, "bot_user_id": envelope.bot_user_id}
        fresh = await asyncio.to_thread(
            self.directory.record_event,
            envelope.event_id,
            envelope.team_id,
            envelope.type,
            payload,
        )
        if not fresh:
            log.info(
                "Slack event %s delivered again (retry %d, %s): ignored",
                envelope.event_id,
                envelope.retry_num,
                envelope.retry_reason or "no reason given",
            )
            return
        event_id = envelope.event_id
        self.executor.submit(lambda: self._process(event_id))

    async def _worth_keeping(self, envelope: Envelope) -> bool:
        """Cheap checks before anything is written: most channel messages are not for us."""
        try:
            if envelope.type == "reaction_added":
                reaction = ReactionEvent.model_validate(envelope.event)
                return reaction.reaction == STOP_REACTION and reaction.item.type == "message"
            message = MessageEvent.model_validate(envelope.event)
        except ValidationError as exc:
            log.info("ignoring a %s event we cannot read: %s", envelope.type, exc)
            return False
        if not message.from_person or message.user == envelope.bot_user_id:
            return False
        if envelope.type == "app_mention" or message.direct:
            return True
        # A plain message: only replies in a session's thread, and not the ones that mention
        # the bot (their app_mention event carries them).
        if message.thread_ts is None or mentions(message.text, envelope.bot_user_id):
            return False
        thread = await asyncio.to_thread(self.directory.thread, message.channel, message.thread_ts)
        return thread is not None

    async def command(self, command: SlashCommand) -> Reply:
        return await self.commands.command(command)

    async def repo_picked(self, pick: RepoPick) -> None:
        self.executor.submit(lambda: self.requests.on_pick(pick))

    async def modal_submitted(self, submission: ModalSubmission) -> dict[str, str]:
        return await self.commands.modal_submitted(submission)

    # ------------------------------------------------------------ events (on the executor)

    async def _process(self, event_id: str) -> None:
        if not await asyncio.to_thread(self.directory.claim_event, event_id):
            return
        record = await asyncio.to_thread(self.directory.event, event_id)
        assert record is not None
        error: str | None = None
        try:
            event = record.payload.get("event") or {}
            bot_user_id = str(record.payload.get("bot_user_id") or "")
            if record.type == "reaction_added":
                await self._on_reaction(ReactionEvent.model_validate(event), record.team_id)
            else:
                await self._on_message(
                    MessageEvent.model_validate(event), bot_user_id, record.team_id, event_id
                )
        except Exception as exc:
            log.exception("handling Slack event %s failed", event_id)
            error = f"{type(exc).__name__}: {exc}"
        await asyncio.to_thread(self.directory.finish_event, event_id, error)

    async def _on_message(
        self, msg: MessageEvent, bot_user_id: str, team_id: str, event_id: str
    ) -> None:
        assert msg.user is not None
        root = msg.root_ts
        thread = (
            await asyncio.to_thread(self.directory.thread, msg.channel, root)
            if msg.thread_ts
            else None
        )
        plain = to_plain(msg.text, bot_user_id)
        await asyncio.to_thread(self.directory.touch_participant, msg.channel, root, msg.user)
        if msg.type == "message" and not msg.direct:
            if thread is None:
                return
            if is_stop(plain):
                await self.stop(thread, msg.user, team_id)
            elif self.settings.slack_follow_ups == "thread" and plain:
                await self._follow_up(thread, msg, plain, team_id, event_id)
            else:
                self.updater.poke(thread_id(thread))  # a new participant shows on the message
            return
        await self.out.react(msg.channel, msg.ts, "eyes")
        if thread is not None and is_stop(plain):
            await self.stop(thread, msg.user, team_id)
            return
        new, plain = split_new(plain)
        if not plain:
            await self.out.say(
                msg.channel,
                root,
                f"<@{msg.user}> tell me what to do, e.g. `@Nightshift fix the flaky login test "
                "repo:acme/web`. Type `/nightshift help` for more.",
            )
            return
        if thread is not None and not new and await self._same_repo(msg.text, thread):
            await self._follow_up(thread, msg, plain, team_id, event_id)
            return
        await self._new_request(msg, plain, team_id, event_id, thread)

    async def _same_repo(self, raw: str, thread: SlackThread) -> bool:
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

    async def _on_reaction(self, reaction: ReactionEvent, team_id: str) -> None:
        thread = await asyncio.to_thread(
            self.directory.thread_by_status, reaction.item.channel, reaction.item.ts
        )
        if thread is None:
            return
        await asyncio.to_thread(
            self.directory.touch_participant, thread.channel_id, thread.thread_ts, reaction.user
        )
        await self.stop(thread, reaction.user, team_id)

    # ------------------------------------------------------------ what a request turns into

    async def stop(self, thread: SlackThread, slack_user: str, team_id: str) -> None:
        user = await asyncio.to_thread(self.links.user_for, slack_user)
        if user is None:
            await self.ask_to_link(
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

    async def _follow_up(
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
            await self.ask_to_link(
                msg.user, team_id, msg.channel, thread.thread_ts, "before I can take follow-ups"
            )
            return
        await self.queue_follow_up(thread, user, plain, msg.user)

    async def queue_follow_up(
        self, thread: SlackThread, user: User, text: str, slack_user: str
    ) -> None:
        try:
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

    async def _new_request(
        self,
        msg: MessageEvent,
        plain: str,
        team_id: str,
        event_id: str,
        thread: SlackThread | None,
    ) -> None:
        assert msg.user is not None
        existing = await asyncio.to_thread(self.directory.request_for_event, event_id)
        if existing is not None:
            return  # a previous process got this far: the request is already on its way
        context = ""
        if msg.thread_ts and thread is None:
            context = await self.requests.thread_context(msg)
        request = await asyncio.to_thread(
            self.directory.add_request,
            event_id=event_id,
            kind="new",
            team_id=team_id,
            channel_id=msg.channel,
            thread_ts=msg.root_ts,
            message_ts=msg.ts,
            slack_user_id=msg.user,
            raw=msg.text,
            text=plain,
            context=context,
            state="received",
        )
        user = await asyncio.to_thread(self.links.user_for, msg.user)
        if user is None:
            await asyncio.to_thread(
                self.directory.update_request, request_id(request), state="needs_link"
            )
            await self.ask_to_link(
                msg.user, team_id, msg.channel, msg.root_ts, "before I can work for you"
            )
            return
        await self.requests.route(request, user)

    # ------------------------------------------------------------ identity

    async def ask_to_link(
        self, slack_user: str, team_id: str, channel: str, thread_ts: str, why: str
    ) -> None:
        """Send a one-time link by direct message (not too often) and say so in the thread."""
        last = await asyncio.to_thread(self.links.last_code_at, slack_user)
        if last is None or time.time() - last > LINK_DM_INTERVAL_S:
            await self.send_link(slack_user, team_id)
        await self.out.say(
            channel,
            thread_ts,
            f"<@{slack_user}> I need to know who you are on Nightshift {why}: I've sent you a "
            "direct message with a link that connects your Slack account (or type "
            "`/nightshift link`). I'll pick this up as soon as you're connected.",
        )

    async def new_link_code(self, slack_user: str, team_id: str, slack_name: str = "") -> str:
        name = slack_name or await self.out.user_name(slack_user)
        return await asyncio.to_thread(self.links.create_link_code, slack_user, team_id, name)

    async def send_link(self, slack_user: str, team_id: str) -> None:
        code = await self.new_link_code(slack_user, team_id)
        text, blocks = link_invitation(self.link_url(code), int(LINK_CODE_TTL_S // 60))
        try:
            await self.client.chat_postMessage(
                channel=slack_user, text=text, blocks=blocks, unfurl_links=False
            )
        except SlackApiError as exc:
            log.warning("could not send the link message to %s: %s", slack_user, error_code(exc))

    def complete_link(self, code: str, user: User) -> SlackUserLink:
        """Bind the code's Slack user to `user` (from the web), then pick up what they asked
        while unlinked."""
        link = self.links.redeem(code, user)
        slack_user = link.slack_user_id
        self.executor.submit(lambda: self._linked(slack_user, user))
        return link

    async def _linked(self, slack_user: str, user: User) -> None:
        await self.out.say(
            slack_user,
            None,
            f"You're connected: what you ask me in Slack now runs as {user.name} "
            f"<{user.email}> (`{user.login}` on Nightshift).",
        )
        for request in await asyncio.to_thread(self.directory.waiting_for_link, slack_user):
            if not await asyncio.to_thread(
                self.directory.claim_request, request_id(request), ("needs_link",), "received"
            ):
                continue
            if request.kind == "follow_up" and request.session_id:
                thread = await asyncio.to_thread(
                    self.directory.thread, request.channel_id, request.thread_ts
                )
                if thread is not None:
                    await self.queue_follow_up(thread, user, request.text, slack_user)
                    await asyncio.to_thread(
                        self.directory.update_request, request_id(request), state="started"
                    )
                    continue
            await self.requests.route(request, user)


def build_slack_bot(runtime: Runtime) -> SlackBot:
    """Wire the bot into a runtime: its hub handler, its start-up recovery, its secrets."""
    settings = runtime.settings
    assert settings.slack_bot_token and settings.slack_signing_secret
    runtime.redactor.add([settings.slack_bot_token, settings.slack_signing_secret])
    client = web_client(
        settings.slack_bot_token, settings.slack_api_url, retries=settings.slack_retries
    )
    directory = SlackDirectory(runtime.engine)
    links = SlackLinks(runtime.engine)
    routing = SlackRouting(runtime.engine)
    model = None
    if settings.classifier_model:
        model = ModelSettings(
            model=settings.classifier_model,
            openai_api_key=settings.openai_api_key,
            openai_base_url=settings.openai_base_url,
            anthropic_api_key=settings.anthropic_api_key,
            anthropic_base_url=settings.anthropic_base_url,
            timeout=30.0,
            stream=settings.model_stream,
        )
    classifier = RepoClassifier(
        runtime.repos, routing, threshold=settings.classifier_threshold, model=model
    )
    updater = StatusUpdater(
        directory,
        runtime.sessions,
        client,
        runtime.executor,
        interval=settings.slack_update_interval,
    )
    bot = SlackBot(
        settings,
        runtime.sessions,
        runtime.repos,
        directory,
        links,
        routing,
        classifier,
        updater,
        client,
        runtime.executor,
    )
    runtime.hub.handlers.append(updater.on_event)
    runtime.on_start.append(lambda: bot.start(runtime.periodic))
    return bot
