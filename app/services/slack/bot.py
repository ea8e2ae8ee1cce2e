"""The Slack bot: a mention becomes a session in its thread, replies become follow-ups, `stop`
or an :octagonal_sign: reaction stops it.

`SlackBot` composes the parts and is what Slack's adapter calls. What Slack sends is handled in
`app/services/slack/events.py`; stop and follow-ups in a session's thread in
`app/services/slack/threads.py`; a new request in `app/services/slack/requests.py`; asking an
unlinked user to connect in `app/services/slack/invites.py`; the slash command and the modal in
`app/services/slack/commands.py`; the status message in `app/services/slack/status.py`.
Sessions are made as the Nightshift user the Slack user linked to; what an unlinked user asked
waits for the link and is picked up here when it is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Engine

from app.models import User
from app.overload import Intake
from app.services.classifier import RepoClassifier
from app.services.images import Images
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.services.slack.commands import SlackCommands
from app.services.slack.data import SlackDirectory
from app.services.slack.events import RECOVER_INTERVAL_S, SlackEvents
from app.services.slack.invites import LinkInvites
from app.services.slack.links import SlackLinks, hash_code
from app.services.slack.out import SlackOut
from app.services.slack.requests import RequestFlow, request_id
from app.services.slack.routing import SlackRouting
from app.services.slack.status import StatusUpdater
from app.services.slack.threads import SessionThreads
from app.settings import Settings, reveal
from app.slack_tables import SlackUserLink
from integrations.llm import ModelSettings
from integrations.slack.bolt import (
    Envelope,
    ModalSubmission,
    Reply,
    RepoPick,
    SlashCommand,
    build_app,
)
from integrations.slack.client import web_client
from integrations.slack.socket_mode import SocketModeConnection
from workers.executor import InProcessExecutor


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
        images: Images,
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
        self.intake = Intake()
        """Bound to the server's backlog by the app (`app/main.py`) once it runs."""
        self.requests = RequestFlow(
            directory,
            links,
            sessions,
            repos,
            classifier,
            updater,
            client,
            self.out,
            images,
            self.intake,
        )
        self.invites = LinkInvites(settings.base_url, links, client, self.out)
        self.threads = SessionThreads(
            sessions, repos, directory, links, self.invites, updater, self.out, self.intake
        )
        self.events = SlackEvents(
            settings.slack_follow_ups,
            directory,
            links,
            self.invites,
            self.threads,
            self.requests,
            updater,
            self.out,
            executor,
        )
        self.commands = SlackCommands(
            repos,
            directory,
            links,
            routing,
            self.invites,
            self.requests,
            self.out,
            client,
            executor,
        )
        signing_secret = reveal(settings.slack_signing_secret)
        self.app = build_app(client, signing_secret, self)
        self.handler = AsyncSlackRequestHandler(self.app) if signing_secret else None
        """Serves `POST /slack/events`; None in Socket Mode without a signing secret."""
        app_token = reveal(settings.slack_app_token)
        self.socket = SocketModeConnection(self.app, app_token) if app_token else None
        """The Socket Mode connection when SLACK_APP_TOKEN is set (`start` opens it)."""

    def start(self, periodic: Callable[[float, Callable[[], object], str], None]) -> None:
        self.executor.submit(lambda: asyncio.to_thread(self.updater.load))
        periodic(RECOVER_INTERVAL_S, self.events.recover, "slack-recover")
        if self.socket is not None:
            self.socket.start()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()

    # ------------------------------------------------------------ SlackSink (on the API's loop)

    async def event(self, envelope: Envelope) -> None:
        await self.events.event(envelope)

    async def command(self, command: SlashCommand) -> Reply:
        return await self.commands.command(command)

    async def repo_picked(self, pick: RepoPick) -> None:
        self.executor.submit(lambda: self.requests.on_pick(pick))

    async def modal_submitted(self, submission: ModalSubmission) -> dict[str, str]:
        return await self.commands.modal_submitted(submission)

    # ------------------------------------------------------------ a link made on the web

    def complete_link(self, code: str, user: User) -> SlackUserLink:
        """Bind the code's Slack user to `user` (from the web), then pick up what they asked
        while unlinked."""
        return self.complete_bound_link(hash_code(code), None, user)

    def complete_bound_link(
        self, code_hash: str, slack_user_id: str | None, user: User
    ) -> SlackUserLink:
        """As `complete_link`, for the code an OAuth round trip carried by hash, still issued
        to `slack_user_id`."""
        link = self.links.redeem_bound(code_hash, slack_user_id, user)
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
                    await self.threads.queue_follow_up(thread, user, request.text, slack_user)
                    await asyncio.to_thread(
                        self.directory.update_request, request_id(request), state="started"
                    )
                    continue
            await self.requests.route(request, user)


def build_slack_bot(
    settings: Settings,
    engine: Engine,
    repos: Repos,
    sessions: Sessions,
    executor: InProcessExecutor,
    images: Images,
) -> SlackBot:
    """The bot and its parts, from the settings' secrets. The runtime hands the hub's events to
    `bot.updater.on_event` and calls `bot.start` once it is running."""
    assert settings.slack_bot_token and settings.slack_enabled
    client = web_client(
        settings.slack_bot_token.get_secret_value(),
        settings.slack_api_url,
        retries=settings.slack_retries,
    )
    directory = SlackDirectory(engine)
    links = SlackLinks(engine)
    routing = SlackRouting(engine)
    model = None
    if settings.classifier_model:
        model = ModelSettings(
            model=settings.classifier_model,
            openai_api_key=reveal(settings.openai_api_key),
            openai_base_url=settings.openai_base_url,
            anthropic_api_key=reveal(settings.anthropic_api_key),
            anthropic_base_url=settings.anthropic_base_url,
            timeout=30.0,
            stream=settings.model_stream,
        )
    classifier = RepoClassifier(
        repos, routing, threshold=settings.classifier_threshold, model=model
    )
    updater = StatusUpdater(
        directory,
        sessions,
        client,
        executor,
        interval=settings.slack_update_interval,
    )
    bot = SlackBot(
        settings,
        sessions,
        repos,
        directory,
        links,
        routing,
        classifier,
        updater,
        client,
        executor,
        images,
    )
    return bot
