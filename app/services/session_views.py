"""The public shapes of sessions and prompts, built from the control DB's index rows (a batch
of sessions in three queries) and the session files' prompts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import Participant, Session, User
from app.schemas import PromptPublic, SessionPublic, Usage, UserPublic
from app.session_tables import Prompt
from workers.redact import Redactor


def public_many(
    engine: Engine,
    rows: Sequence[Session],
    last_event_id: Callable[[str], int],
    base_url: str,
) -> list[SessionPublic]:
    """The public shape of several sessions: three queries however many rows."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    children: dict[str, list[str]] = defaultdict(list)
    participants: dict[str, list[User]] = defaultdict(list)
    with DB(engine) as db:
        authors = {
            user.id: user
            for user in db.exec(
                select(User).where(col(User.id).in_({row.author_id for row in rows}))
            ).all()
        }
        for child_id, parent_id in db.exec(
            select(Session.id, Session.parent_id)
            .where(col(Session.parent_id).in_(ids))
            .order_by(col(Session.created_at))
        ).all():
            children[str(parent_id)].append(child_id)
        for session_id, user in db.exec(
            select(Participant.session_id, User)
            .join(User, col(Participant.user_id) == User.id)
            .where(col(Participant.session_id).in_(ids))
            .order_by(col(Participant.joined_at))
        ).all():
            participants[session_id].append(user)
    return [
        _public(
            row,
            authors[row.author_id],
            children[row.id],
            participants[row.id],
            last_event_id(row.id),
            base_url,
        )
        for row in rows
    ]


def public_new(row: Session, author: User, last_event_id: int, base_url: str) -> SessionPublic:
    """The public shape of a session this request just created, without a query: it has no
    children yet and its author is its one participant."""
    return _public(row, author, [], [author], last_event_id, base_url)


def _public(
    row: Session,
    author: User,
    children: list[str],
    participants: list[User],
    last_event_id: int,
    base_url: str,
) -> SessionPublic:
    return SessionPublic(
        id=row.id,
        status=row.status,
        repo=row.repo_name,
        title=row.title,
        author=UserPublic.model_validate(author),
        branch=row.branch,
        head_sha=row.head_sha,
        pr_url=row.pr_url,
        pr_number=row.pr_number,
        pr_state=row.pr_state,
        parent_id=row.parent_id,
        children=children,
        participants=[UserPublic.model_validate(p) for p in participants],
        prompt_count=row.prompt_count,
        last_event_id=last_event_id,
        start_mode=row.start_mode,
        start_ms=row.start_ms,
        first_model_ms=row.first_model_ms,
        created_at=row.created_at,
        updated_at=row.updated_at,
        url=f"{base_url}/sessions/{row.id}",
        model=row.model,
        usage=Usage.model_validate(row, from_attributes=True),
    )


def prompt_public(redactor: Redactor, prompt: Prompt, position: int | None = None) -> PromptPublic:
    """A queued or past prompt as the API shows it (its text redacted)."""
    author = prompt.author()
    assert prompt.id is not None
    return PromptPublic(
        id=prompt.id,
        text=redactor.text(prompt.text),
        author=UserPublic(id=author.id, login=author.login, name=author.name, email=author.email),
        state=prompt.state,
        created_at=prompt.created_at,
        started_at=prompt.started_at,
        finished_at=prompt.finished_at,
        attempt=max(prompt.attempt, 1),
        position=position,
    )
