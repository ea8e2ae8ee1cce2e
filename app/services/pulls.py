"""Pull requests on the local forge: records in the control DB, one per session branch."""

from __future__ import annotations

import time

from sqlalchemy import Engine, func
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import NotFound
from app.models import PullRequest, Repo, Session, User
from workers.events import BranchPushed


class LocalPullRequests:
    """Implements `PullRequestOpener` for repositories on this machine."""

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url

    def url(self, repo: Repo, number: int) -> str:
        return f"{self.base_url}/api/repos/{repo.name}/pulls/{number}"

    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        assert repo.id is not None and author.id is not None
        with DB(self.engine, expire_on_commit=False) as db:
            existing = db.exec(
                select(PullRequest).where(
                    PullRequest.repo_id == repo.id, PullRequest.head == event.branch
                )
            ).first()
            if existing is not None:
                existing.head_sha = event.sha
                existing.updated_at = time.time()
                db.add(existing)
                db.commit()
                return existing.url, existing.number, existing.state
            number = (
                int(
                    db.exec(
                        select(func.coalesce(func.max(PullRequest.number), 0)).where(
                            PullRequest.repo_id == repo.id
                        )
                    ).one()
                )
                + 1
            )
            pr = PullRequest(
                repo_id=repo.id,
                number=number,
                session_id=session.id,
                title=event.title or session.title,
                body=_body(event, session),
                author_id=author.id,
                base=event.base,
                head=event.branch,
                head_sha=event.sha,
                url=self.url(repo, number),
            )
            db.add(pr)
            db.commit()
            return pr.url, pr.number, pr.state

    def list(self, repo: Repo) -> list[PullRequest]:
        with DB(self.engine) as db:
            return list(
                db.exec(
                    select(PullRequest)
                    .where(PullRequest.repo_id == repo.id)
                    .order_by(col(PullRequest.number).desc())
                ).all()
            )

    def get(self, repo: Repo, number: int) -> PullRequest:
        with DB(self.engine) as db:
            pr = db.exec(
                select(PullRequest).where(
                    PullRequest.repo_id == repo.id, PullRequest.number == number
                )
            ).first()
        if pr is None:
            raise NotFound(f"{repo.name} has no pull request #{number}")
        return pr


def _body(event: BranchPushed, session: Session) -> str:
    summary = event.body.strip() or "(no summary)"
    return f"{summary}\n\n---\nOpened by Nightshift for session {session.id}."
