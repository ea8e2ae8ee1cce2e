"""What the bot says in Slack: thread replies, ephemeral answers, reactions, and who a user
is. A failed call is logged, not raised: a reply that could not be posted must not undo the
work it reports."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from integrations.slack.client import error_code

log = logging.getLogger("nightshift.slack")


class SlackOut:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def say(self, channel: str, thread_ts: str | None, text: str) -> str | None:
        """Post a message (in a thread when `thread_ts` is set); returns its ts."""
        try:
            response = await self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=text, unfurl_links=False
            )
        except SlackApiError as exc:
            log.warning("posting to %s failed: %s", channel, error_code(exc))
            return None
        return str(response["ts"])

    async def busy(self, channel: str, thread_ts: str, slack_user: str, what: str) -> None:
        """Tell `slack_user` that `what` ("yours", "your follow-up") waits for the server's
        backlog (`app/overload.py` `Intake`) and goes in by itself."""
        await self.say(
            channel,
            thread_ts,
            f"<@{slack_user}> Nightshift is busy taking in other prompts: {what} waits for its "
            "turn and goes in by itself.",
        )

    async def ephemeral(self, channel: str, user: str, text: str) -> None:
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as exc:
            log.warning("ephemeral message to %s failed: %s", user, error_code(exc))

    async def react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as exc:
            if error_code(exc) != "already_reacted":
                log.info("adding :%s: failed: %s", name, error_code(exc))

    async def user_name(self, slack_user: str) -> str:
        try:
            response = await self.client.users_info(user=slack_user)
        except SlackApiError as exc:
            log.info("users.info for %s failed: %s", slack_user, error_code(exc))
            return ""
        info = response.get("user") or {}
        profile = info.get("profile") or {}
        return str(
            profile.get("real_name")
            or info.get("real_name")
            or profile.get("display_name")
            or info.get("name")
            or ""
        )
