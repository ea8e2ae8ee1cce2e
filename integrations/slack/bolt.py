"""The slack-bolt app: verifies every request, turns Slack payloads into small typed records
and hands them to a `SlackSink`, which must answer fast (Slack wants a reply within 3 s).

Bolt does the protocol: signature and timestamp checks (401 otherwise), the `url_verification`
challenge, `ssl_check`, dropping the bot's own events, and acknowledging. We run it with
`process_before_response=True` so a sink that fails to record an event answers 500 and Slack
retries, instead of the event being acknowledged and lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from integrations.slack.blocks import MODAL_CALLBACK, PICK_ACTION, PICK_BLOCK_PREFIX

log = logging.getLogger("nightshift.slack")
HANDLED_EVENTS = ("app_mention", "message", "reaction_added")
COMMAND = "/nightshift"


class MessageEvent(BaseModel):
    """An `app_mention` or `message` event."""

    model_config = ConfigDict(extra="ignore")

    type: str
    channel: str
    ts: str
    user: str | None = None
    text: str = ""
    thread_ts: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    channel_type: str | None = None
    """`im` for a direct message with the bot (no mention needed there)."""

    @property
    def direct(self) -> bool:
        return self.channel_type == "im" or self.channel.startswith("D")

    @property
    def root_ts(self) -> str:
        """The thread this message belongs to (its own ts when it starts one)."""
        return self.thread_ts or self.ts

    @property
    def from_person(self) -> bool:
        """Written by a person (not a bot, not an edit, join or deletion notice)."""
        return (
            self.user is not None
            and self.bot_id is None
            and self.subtype in (None, "thread_broadcast", "file_share")
        )


class ReactionItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    channel: str = ""
    ts: str = ""


class ReactionEvent(BaseModel):
    """A `reaction_added` event."""

    model_config = ConfigDict(extra="ignore")

    type: str
    user: str
    reaction: str
    item: ReactionItem


@dataclass(frozen=True)
class Envelope:
    """One Events API delivery."""

    event_id: str
    team_id: str
    type: str
    event: dict[str, Any]
    bot_user_id: str
    retry_num: int = 0
    retry_reason: str = ""


@dataclass(frozen=True)
class SlashCommand:
    user_id: str
    user_name: str
    team_id: str
    channel_id: str
    text: str
    trigger_id: str


@dataclass(frozen=True)
class Reply:
    """What a slash command answers at once (only the person who typed it sees it)."""

    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RepoPick:
    request_id: int
    repo: str
    user_id: str
    channel_id: str
    message_ts: str


@dataclass(frozen=True)
class ModalSubmission:
    user_id: str
    team_id: str
    channel_id: str
    repo: str | None
    prompt: str


class SlackSink(Protocol):
    """What the bot does with what Slack sends. Every method must return within ~2 s: record,
    enqueue, return."""

    async def event(self, envelope: Envelope) -> None: ...

    async def command(self, command: SlashCommand) -> Reply: ...

    async def repo_picked(self, pick: RepoPick) -> None: ...

    async def modal_submitted(self, submission: ModalSubmission) -> dict[str, str]:
        """Start what the modal asks; returns errors by block id (empty when accepted)."""
        ...


def _header(request: AsyncBoltRequest, name: str) -> str:
    values = request.headers.get(name) or []
    return values[0] if values else ""


class _TokenFromClient(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment even when given a client (which holds
    the same token) and warns that it is unused; the warning is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def build_app(client: AsyncWebClient, signing_secret: str | None, sink: SlackSink) -> AsyncApp:
    """The bolt app for `POST /slack/events` and Socket Mode (events, the slash command and
    interactivity). Without a signing secret it serves Socket Mode only: nothing may hand it an
    HTTP request, which it could not verify."""
    bolt_log = logging.getLogger("nightshift.slack.bolt")
    if not any(isinstance(f, _TokenFromClient) for f in bolt_log.filters):
        bolt_log.addFilter(_TokenFromClient())
    app = AsyncApp(
        name="nightshift",
        client=client,
        signing_secret=signing_secret or "",
        # Socket Mode envelopes are not signed; bolt verifies HTTP requests only.
        request_verification_enabled=bool(signing_secret),
        process_before_response=True,
        logger=bolt_log,
    )

    async def on_event(body: dict[str, Any], context: Any, request: AsyncBoltRequest) -> None:
        event = body.get("event") or {}
        retry = _header(request, "x-slack-retry-num")
        await sink.event(
            Envelope(
                event_id=str(body.get("event_id") or ""),
                team_id=str(body.get("team_id") or context.team_id or ""),
                type=str(event.get("type") or ""),
                event=event,
                bot_user_id=str(context.bot_user_id or ""),
                retry_num=int(retry) if retry.isdigit() else 0,
                retry_reason=_header(request, "x-slack-retry-reason"),
            )
        )

    for name in HANDLED_EVENTS:
        app.event(name)(on_event)

    async def on_command(ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
        reply = await sink.command(
            SlashCommand(
                user_id=str(command.get("user_id") or ""),
                user_name=str(command.get("user_name") or ""),
                team_id=str(command.get("team_id") or ""),
                channel_id=str(command.get("channel_id") or ""),
                text=str(command.get("text") or "").strip(),
                trigger_id=str(command.get("trigger_id") or ""),
            )
        )
        if reply.blocks:
            await ack(text=reply.text, blocks=reply.blocks, response_type="ephemeral")
        elif reply.text:
            await ack(text=reply.text, response_type="ephemeral")
        else:
            await ack()

    app.command(COMMAND)(on_command)

    async def on_pick(ack: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        await ack()
        action = next(
            (a for a in body.get("actions") or [] if a.get("action_id") == PICK_ACTION), None
        )
        if action is None:
            return
        block_id = str(action.get("block_id") or "")
        request_id = block_id.removeprefix(PICK_BLOCK_PREFIX)
        selected = (action.get("selected_option") or {}).get("value")
        if not request_id.isdigit() or not selected:
            log.warning("ignoring a repo pick with block %r and value %r", block_id, selected)
            return
        container = body.get("container") or {}
        await sink.repo_picked(
            RepoPick(
                request_id=int(request_id),
                repo=str(selected),
                user_id=str((body.get("user") or {}).get("id") or ""),
                channel_id=str(
                    container.get("channel_id") or (body.get("channel") or {}).get("id") or ""
                ),
                message_ts=str(
                    container.get("message_ts") or (body.get("message") or {}).get("ts") or ""
                ),
            )
        )

    app.action(PICK_ACTION)(on_pick)

    async def on_submit(
        ack: Callable[..., Awaitable[Any]], body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        values = (view.get("state") or {}).get("values") or {}
        repo = ((values.get("repo") or {}).get("repo") or {}).get("selected_option") or {}
        prompt = ((values.get("prompt") or {}).get("prompt") or {}).get("value") or ""
        errors = await sink.modal_submitted(
            ModalSubmission(
                user_id=str((body.get("user") or {}).get("id") or ""),
                team_id=str((body.get("team") or {}).get("id") or ""),
                channel_id=str(view.get("private_metadata") or ""),
                repo=repo.get("value"),
                prompt=str(prompt),
            )
        )
        if errors:
            await ack(response_action="errors", errors=errors)
        else:
            await ack()

    app.view(MODAL_CALLBACK)(on_submit)
    return app
