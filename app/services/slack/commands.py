"""`/nightshift`: help, link/unlink, the channel's default repository, a prompt typed after the
command, and the new-session modal."""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import ServiceError
from app.models import User
from app.services.repos import Repos
from app.services.slack.data import SlackDirectory
from app.services.slack.invites import LinkInvites
from app.services.slack.links import LINK_CODE_TTL_S, SlackLinks
from app.services.slack.out import SlackOut
from app.services.slack.requests import RequestFlow
from app.services.slack.routing import SlackRouting
from app.slack_tables import SlackRequest
from integrations.slack.blocks import new_session_modal
from integrations.slack.bolt import ModalSubmission, Reply, SlashCommand
from integrations.slack.client import error_code
from integrations.slack.text import quote, split_model, to_plain
from workers.executor import InProcessExecutor

log = logging.getLogger("nightshift.slack")

HELP = """*Nightshift*: background coding agents that end in a pull request in your name.
• Mention me with what to do, e.g. `@Nightshift fix the flaky login test repo:acme/web`. I answer in the thread and keep one message there up to date until the pull request is open.
• Mention me in that thread to follow up (it queues behind running work); reply `stop` or react :octagonal_sign: to the status message to stop. `new: ...` in the thread starts another session there.
• `/nightshift` opens a form; `/nightshift <what to do>` starts from this channel.
• `/nightshift link` connects your Slack account to your Nightshift account; `/nightshift unlink` disconnects it.
• `/nightshift default REPO` sends this channel's requests to REPO unless they name another (`/nightshift default none` clears it)."""


class SlackCommands:
    def __init__(
        self,
        repos: Repos,
        directory: SlackDirectory,
        links: SlackLinks,
        routing: SlackRouting,
        invites: LinkInvites,
        requests: RequestFlow,
        out: SlackOut,
        client: AsyncWebClient,
        executor: InProcessExecutor,
    ) -> None:
        self.repos = repos
        self.directory = directory
        self.links = links
        self.routing = routing
        self.invites = invites
        self.requests = requests
        self.out = out
        self.client = client
        self.executor = executor

    async def command(self, cmd: SlashCommand) -> Reply:
        """Answer `/nightshift ...` at once; anything slow goes to the executor."""
        sub, _, rest = cmd.text.partition(" ")
        sub, rest = sub.lower(), rest.strip()
        links = self.links
        if sub in ("help", "?"):
            return Reply(HELP)
        if sub == "link" and not rest:
            return await self._link(cmd)
        if sub == "unlink" and not rest:
            gone = await asyncio.to_thread(links.unlink, cmd.user_id)
            return Reply(
                "Disconnected: I'll ask who you are before working for you again."
                if gone
                else "Your Slack account was not connected to Nightshift."
            )
        user = await asyncio.to_thread(links.user_for, cmd.user_id)
        if sub == "default":
            return await self._default(cmd, rest, user)
        if user is None:
            return await self._link(cmd, "First, connect your Slack account to Nightshift: ")
        if sub in ("", "new") and not rest:
            self.executor.submit(lambda: self._open_modal(cmd))
            return Reply()
        text = rest if sub == "new" else cmd.text
        self.executor.submit(lambda: self._from_text(cmd, user, text))
        return Reply()

    async def _link(self, cmd: SlashCommand, intro: str = "") -> Reply:
        linked = await asyncio.to_thread(self.links.user_for, cmd.user_id)
        code = await asyncio.to_thread(
            self.links.create_link_code, cmd.user_id, cmd.team_id, cmd.user_name
        )
        url = self.invites.link_url(code)
        lead = (
            f"You're connected as `{linked.login}`. To connect a different Nightshift account, "
            if linked is not None
            else intro + "To connect your Slack account, "
        )
        minutes = int(LINK_CODE_TTL_S // 60)
        return Reply(
            f"{lead}open <{url}|this link> while signed in to Nightshift. It works once and "
            f"expires in {minutes} minutes."
        )

    async def _default(self, cmd: SlashCommand, rest: str, user: User | None) -> Reply:
        routing = self.routing
        if not rest:
            current = await asyncio.to_thread(routing.channel_default, cmd.channel_id)
            if current is None:
                return Reply(
                    "This channel has no default repository. Set one with "
                    "`/nightshift default REPO`."
                )
            return Reply(f"Requests in this channel go to `{current}` unless they name another.")
        if user is None:
            return await self._link(cmd, "Only connected people can change that. ")
        try:
            if rest.lower() in ("none", "clear", "off"):
                await asyncio.to_thread(routing.clear_channel_default, cmd.channel_id)
                return Reply("This channel has no default repository any more.")
            repo = await asyncio.to_thread(self.repos.get, rest)
            await asyncio.to_thread(
                routing.set_channel_default, cmd.channel_id, repo.name, user.login
            )
        except ServiceError as exc:
            return Reply(str(exc))
        return Reply(
            f"Requests in this channel now go to `{repo.name}` unless they name another repository."
        )

    async def _open_modal(self, cmd: SlashCommand) -> None:
        repos = await asyncio.to_thread(self.repos.list)
        if not repos:
            await self.out.ephemeral(
                cmd.channel_id,
                cmd.user_id,
                "No repositories are registered yet: add one with `nightshift repos add` first.",
            )
            return
        default = await asyncio.to_thread(self.routing.channel_default, cmd.channel_id)
        view = new_session_modal(cmd.channel_id, [(r.name, r.description) for r in repos], default)
        try:
            await self.client.views_open(trigger_id=cmd.trigger_id, view=view)
        except SlackApiError as exc:
            await self.out.ephemeral(
                cmd.channel_id, cmd.user_id, f"I could not open the form: {error_code(exc)}."
            )

    async def modal_submitted(self, sub: ModalSubmission) -> dict[str, str]:
        errors: dict[str, str] = {}
        prompt = sub.prompt.strip()
        if not prompt:
            errors["prompt"] = "Tell the agent what to do."
        user = await asyncio.to_thread(self.links.user_for, sub.user_id)
        if user is None:
            errors["prompt"] = "Connect your Slack account first: type /nightshift link."
        if not sub.repo:
            errors["repo"] = "Pick a repository."
        else:
            try:
                await asyncio.to_thread(self.repos.get, sub.repo)
            except ServiceError as exc:
                errors["repo"] = str(exc)[:150]
        if errors or user is None or sub.repo is None:
            return errors
        repo = sub.repo
        self.executor.submit(lambda: self._from_modal(sub, user, repo, prompt))
        return {}

    async def _from_text(self, cmd: SlashCommand, user: User, text: str) -> None:
        model, _ = split_model(to_plain(text))
        if model is not None:
            try:
                self.requests.sessions.models.choose(model)
            except ServiceError as exc:
                await self.out.ephemeral(cmd.channel_id, cmd.user_id, str(exc))
                return
        request = await self._open_thread(cmd.channel_id, cmd.user_id, cmd.team_id, text)
        if request is not None:
            await self.requests.route(request, user)

    async def _from_modal(self, sub: ModalSubmission, user: User, repo: str, prompt: str) -> None:
        request = await self._open_thread(sub.channel_id, sub.user_id, sub.team_id, prompt)
        if request is not None:
            await self.requests.start_session(request, user, repo, "picked in /nightshift")

    async def _open_thread(
        self, channel: str, slack_user: str, team_id: str, raw: str
    ) -> SlackRequest | None:
        """Post what someone asked as a message whose thread the session lives in (in their
        direct messages when the bot cannot post in the channel)."""
        header = f"<@{slack_user}> asked Nightshift:\n{quote(to_plain(raw), 1500)}"
        client = self.client
        try:
            response = await client.chat_postMessage(
                channel=channel or slack_user, text=header, unfurl_links=False
            )
        except SlackApiError as exc:
            log.info(
                "cannot post in %s (%s): answering by direct message", channel, error_code(exc)
            )
            try:
                response = await client.chat_postMessage(
                    channel=slack_user,
                    text=header + "\n_I can't post in that channel, so we'll work here._",
                    unfurl_links=False,
                )
            except SlackApiError as again:
                log.warning("cannot reach %s either: %s", slack_user, error_code(again))
                return None
        thread_ts = str(response["ts"])
        model, text = split_model(to_plain(raw))
        return await asyncio.to_thread(
            self.directory.add_request,
            kind="new",
            team_id=team_id,
            channel_id=str(response.get("channel") or channel),
            thread_ts=thread_ts,
            message_ts=thread_ts,
            slack_user_id=slack_user,
            raw=raw,
            text=text,
            state="received",
            model=model,
        )
