"""`nightshift slack ...`: channel defaults, identity links and classifier keywords.

These only touch the control DB, so they work whether or not the server is running and
whether or not Slack credentials are set on this machine.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.commands.common import console, fail
from app.errors import ServiceError
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.repos import Repos
    from app.services.slack.links import SlackLinks
    from app.services.slack.routing import SlackRouting
    from app.services.users import Users

app = typer.Typer(
    help="The Slack bot: channel defaults, Slack ↔ Nightshift identity links, classifier keywords.",
    no_args_is_help=True,
)


@dataclass
class _Control:
    links: SlackLinks
    routing: SlackRouting
    repos: Repos
    users: Users


@contextlib.contextmanager
def _control() -> Iterator[_Control]:
    from app.db import control_engine
    from app.services.repos import Repos
    from app.services.slack.links import SlackLinks
    from app.services.slack.routing import SlackRouting
    from app.services.users import Users
    from app.wiring import init_control_db

    try:
        settings = Settings()
        engine = control_engine(settings.control_db_url)
        init_control_db(engine)
    except Exception as exc:
        fail(f"could not open the control DB: {exc}")
    try:
        yield _Control(SlackLinks(engine), SlackRouting(engine), Repos(engine), Users(engine))
    except ServiceError as exc:
        fail(str(exc))
    finally:
        engine.dispose()


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command("channel-default")
def channel_default(
    channel: Annotated[
        str | None, typer.Argument(help="Slack channel ID (C0123ABCD); omit to list every default")
    ] = None,
    repo: Annotated[str | None, typer.Argument(help="A registered repo's name")] = None,
    unset: Annotated[bool, typer.Option("--unset", help="Remove the channel's default")] = False,
) -> None:
    """Send a channel's requests to REPO unless a message names another repository."""
    with _control() as control:
        if channel is None:
            table = Table("channel", "repo", "set by", "updated", title="channel defaults")
            for row in control.routing.channel_defaults():
                table.add_row(row.channel_id, row.repo_name, row.set_by, _when(row.updated_at))
            console.print(table)
            return
        from app.services.slack.routing import check_channel

        check_channel(channel)
        if unset:
            if repo is not None:
                fail("give either REPO or --unset, not both")
            removed = control.routing.clear_channel_default(channel)
            console.print(f"{channel}: {'default removed' if removed else 'had no default'}")
            return
        if repo is None:
            current = control.routing.channel_default(channel)
            console.print(f"{channel}: {current or 'no default'}", highlight=False)
            return
        name = control.repos.get(repo).name
        control.routing.set_channel_default(channel, name, "cli")
        console.print(f"requests in {channel} now go to [bold]{name}[/]", highlight=False)


@app.command("link")
def link(
    slack_user: Annotated[str, typer.Argument(help="Slack member ID (U0123ABCD)")],
    login: Annotated[str, typer.Argument(help="The Nightshift user's login")],
) -> None:
    """Link a Slack user to a Nightshift user (people can also do it themselves: /nightshift link)."""
    with _control() as control:
        user = control.users.by_login(login)
        if user is None:
            fail(f"no Nightshift user {login!r}: create one with `nightshift tokens create`")
        control.links.link(slack_user, user)
        console.print(
            f"Slack user {slack_user} now acts as {user.name} <{user.email}> ({user.login})",
            highlight=False,
        )


@app.command("unlink")
def unlink(slack_user: Annotated[str, typer.Argument(help="Slack member ID")]) -> None:
    """Remove a Slack user's link."""
    with _control() as control:
        removed = control.links.unlink(slack_user)
        console.print(f"{slack_user}: {'unlinked' if removed else 'was not linked'}")


@app.command("links")
def links() -> None:
    """List linked Slack users."""
    with _control() as control:
        table = Table("slack user", "slack name", "login", "name", "linked")
        for row, user in control.links.links():
            table.add_row(
                row.slack_user_id, row.slack_name, user.login, user.name, _when(row.linked_at)
            )
        console.print(table)


@app.command("keywords")
def keywords(
    repo: Annotated[str, typer.Argument(help="A registered repo's name")],
    words: Annotated[
        list[str] | None, typer.Argument(help="Words or phrases that point to it; omit to show")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every keyword")] = False,
) -> None:
    """Words that point the Slack classifier at a repository (besides its name and description)."""
    with _control() as control:
        row = control.repos.get(repo)
        assert row.id is not None
        if clear or words:
            saved = control.routing.set_keywords(row.id, [] if clear else list(words or []))
        else:
            saved = control.routing.keywords().get(row.id, [])
        console.print(f"{row.name}: {', '.join(saved) or 'no keywords'}", highlight=False)
