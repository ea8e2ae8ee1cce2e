"""What picks the repository of a Slack request that names none, in the control DB: channel
defaults and classifier keywords."""

from __future__ import annotations

import re
import time

from sqlalchemy import Engine, delete
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Invalid
from app.slack_tables import RepoKeywords, SlackChannelDefault

_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def check_channel(channel_id: str) -> str:
    if not _CHANNEL_RE.match(channel_id):
        raise Invalid(
            f"{channel_id!r} is not a Slack channel ID: use the ID (C0123ABCD), shown at the "
            "bottom of the channel's details in Slack"
        )
    return channel_id


class SlackRouting:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ channel defaults

    def channel_default(self, channel_id: str) -> str | None:
        with DB(self.engine) as db:
            row = db.get(SlackChannelDefault, channel_id)
        return row.repo_name if row is not None else None

    def set_channel_default(self, channel_id: str, repo_name: str, set_by: str) -> None:
        check_channel(channel_id)
        with DB(self.engine) as db:
            row = db.get(SlackChannelDefault, channel_id) or SlackChannelDefault(
                channel_id=channel_id, repo_name=repo_name
            )
            row.repo_name, row.set_by, row.updated_at = repo_name, set_by[:100], time.time()
            db.add(row)
            db.commit()

    def clear_channel_default(self, channel_id: str) -> bool:
        with DB(self.engine) as db:
            result = db.exec(
                delete(SlackChannelDefault).where(col(SlackChannelDefault.channel_id) == channel_id)
            )
            db.commit()
        return bool(result.rowcount)

    def channel_defaults(self) -> list[SlackChannelDefault]:
        with DB(self.engine) as db:
            return list(
                db.exec(
                    select(SlackChannelDefault).order_by(col(SlackChannelDefault.channel_id))
                ).all()
            )

    # ------------------------------------------------------------ classifier keywords

    def keywords(self) -> dict[int, list[str]]:
        with DB(self.engine) as db:
            return {row.repo_id: list(row.keywords) for row in db.exec(select(RepoKeywords)).all()}

    def set_keywords(self, repo_id: int, words: list[str]) -> list[str]:
        clean = sorted({w.strip().lower() for w in words if w.strip()})
        with DB(self.engine) as db:
            row = db.get(RepoKeywords, repo_id) or RepoKeywords(repo_id=repo_id)
            row.keywords = clean
            db.add(row)
            db.commit()
        return clean
