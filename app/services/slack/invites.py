"""Asking a Slack user to connect their account: the one-time link sent by direct message, and
the note in the thread saying why the bot waits."""

from __future__ import annotations

import asyncio
import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.services.slack.links import LINK_CODE_TTL_S, SlackLinks
from app.services.slack.out import SlackOut
from integrations.slack.blocks import link_invitation
from integrations.slack.client import error_code

log = logging.getLogger("nightshift.slack")

LINK_DM_INTERVAL_S = 600.0
"""An unlinked user gets at most one link message this often, however many times they ask."""


class LinkInvites:
    def __init__(
        self, base_url: str, links: SlackLinks, client: AsyncWebClient, out: SlackOut
    ) -> None:
        self.base_url = base_url
        self.links = links
        self.client = client
        self.out = out

    def link_url(self, code: str) -> str:
        return f"{self.base_url}/slack/link/{code}"

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
