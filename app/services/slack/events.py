"""What Slack sends to the bot: mentions, messages in a session's thread and :octagonal_sign:
reactions. Each is recorded (de-duplicated on `event_id`) and acknowledged at once, then handled
on the executor; events a stopped process left unfinished are handled again."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Literal

from pydantic import ValidationError

from app.errors import ServiceError
from app.services.slack.data import SlackDirectory
from app.services.slack.invites import LinkInvites
from app.services.slack.links import SlackLinks
from app.services.slack.out import SlackOut
from app.services.slack.requests import RequestFlow, request_id, thread_id
from app.services.slack.status import StatusUpdater
from app.services.slack.threads import SessionThreads
from app.slack_tables import SlackThread
from integrations.slack.bolt import Envelope, MessageEvent, ReactionEvent
from integrations.slack.text import is_stop, mentions, split_model, split_new, to_plain
from workers.executor import InProcessExecutor

log = logging.getLogger("nightshift.slack")

STOP_REACTION = "octagonal_sign"
PRUNE_INTERVAL_S = 3600.0
RECOVER_INTERVAL_S = 30.0


class SlackEvents:
    def __init__(
        self,
        follow_ups: Literal["mentions", "thread"],
        directory: SlackDirectory,
        links: SlackLinks,
        invites: LinkInvites,
        threads: SessionThreads,
        requests: RequestFlow,
        updater: StatusUpdater,
        out: SlackOut,
        executor: InProcessExecutor,
    ) -> None:
        self.follow_ups = follow_ups
        self.directory = directory
        self.links = links
        self.invites = invites
        self.threads = threads
        self.requests = requests
        self.updater = updater
        self.out = out
        self.executor = executor
        self._pruned = time.monotonic()

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

    # ------------------------------------------------------------ on the API's loop

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

    # ------------------------------------------------------------ on the executor

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
                await self.threads.stop(thread, msg.user, team_id)
            elif self.follow_ups == "thread" and plain:
                await self.threads.follow_up(thread, msg, plain, team_id, event_id)
            else:
                self.updater.poke(thread_id(thread))  # a new participant shows on the message
            return
        await self.out.react(msg.channel, msg.ts, "eyes")
        if thread is not None and is_stop(plain):
            await self.threads.stop(thread, msg.user, team_id)
            return
        new, plain = split_new(plain)
        model, plain = split_model(plain)
        if model is not None:
            try:
                self.requests.sessions.models.choose(model)
            except ServiceError as exc:
                await self.out.say(msg.channel, root, f"<@{msg.user}> {exc}")
                return
        if not plain:
            await self.out.say(
                msg.channel,
                root,
                f"<@{msg.user}> tell me what to do, e.g. `@Nightshift fix the flaky login test "
                "repo:acme/web`. Type `/nightshift help` for more.",
            )
            return
        # A model is chosen when a session starts: naming one asks for a new session.
        follow_up = not new and model is None
        if thread is not None and follow_up and await self.threads.same_repo(msg.text, thread):
            await self.threads.follow_up(thread, msg, plain, team_id, event_id)
            return
        await self._new_request(msg, plain, team_id, event_id, thread, model)

    async def _on_reaction(self, reaction: ReactionEvent, team_id: str) -> None:
        thread = await asyncio.to_thread(
            self.directory.thread_by_status, reaction.item.channel, reaction.item.ts
        )
        if thread is None:
            return
        await asyncio.to_thread(
            self.directory.touch_participant, thread.channel_id, thread.thread_ts, reaction.user
        )
        await self.threads.stop(thread, reaction.user, team_id)

    async def _new_request(
        self,
        msg: MessageEvent,
        plain: str,
        team_id: str,
        event_id: str,
        thread: SlackThread | None,
        model: str | None = None,
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
            model=model,
        )
        user = await asyncio.to_thread(self.links.user_for, msg.user)
        if user is None:
            await asyncio.to_thread(
                self.directory.update_request, request_id(request), state="needs_link"
            )
            await self.invites.ask_to_link(
                msg.user, team_id, msg.channel, msg.root_ts, "before I can work for you"
            )
            return
        await self.requests.route(request, user)
