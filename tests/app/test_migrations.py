"""Control-DB migrations: they build exactly what the models describe, on SQLite and
PostgreSQL, and never a per-session table. A model change without a migration fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, inspect
from sqlmodel import SQLModel, select

from app.db import control_engine
from app.migrate import BASELINE, differences, downgrade, head_revision, upgrade
from app.models import CONTROL_TABLES
from app.session_tables import SESSION_TABLES

SESSION_NAMES = {t.name for t in SESSION_TABLES}
CONTROL_NAMES = {t.name for t in CONTROL_TABLES}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'control.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = control_engine(url)
    yield engine
    engine.dispose()


def test_migrations_build_what_the_models_describe(engine: Any) -> None:
    assert upgrade(engine) == (None, head_revision())
    diff = differences(engine)
    assert diff == [], (
        "the control-DB models and migrations differ; add a migration with "
        "`alembic -c app/alembic.ini revision --autogenerate -m '...'`:\n"
        + "\n".join(map(str, diff))
    )
    tables = set(inspect(engine).get_table_names())
    assert tables == CONTROL_NAMES | {"alembic_version"}
    assert not tables & SESSION_NAMES


def test_every_table_is_declared_control_or_session() -> None:
    """A new table must be listed in CONTROL_TABLES (migrated) or SESSION_TABLES (never)."""
    import app.main  # noqa: F401  (imports every model module the server uses)

    declared = CONTROL_NAMES | SESSION_NAMES
    undeclared = set(SQLModel.metadata.tables) - declared
    assert not undeclared, f"tables in neither CONTROL_TABLES nor SESSION_TABLES: {undeclared}"
    assert not CONTROL_NAMES & SESSION_NAMES


def test_upgrade_is_idempotent_and_downgrade_reverses(tmp_path: Path) -> None:
    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    upgrade(engine)
    assert upgrade(engine) == (head_revision(), head_revision())
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(engine)
    assert differences(engine) == []
    engine.dispose()


@pytest.mark.parametrize("made_by", ["first release", "a release with GitHub"])
def test_a_control_db_from_before_migrations_is_adopted(tmp_path: Path, made_by: str) -> None:
    """Databases made by `create_all` (before migrations) are completed, stamped, upgraded."""
    from sqlalchemy import text
    from sqlmodel import Session as DB

    from app.migrate import LEGACY, LEGACY_TABLES
    from app.models import User

    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    upgrade(engine, BASELINE)  # the first release's tables ...
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # ... as create_all left them
        if made_by == "a release with GitHub":
            conn.execute(text("CREATE TABLE github_deliveries (id VARCHAR(64) PRIMARY KEY)"))
        conn.execute(
            text(
                "INSERT INTO users (login, name, email, created_at) "
                "VALUES ('old', 'Old User', 'old@example.com', 0)"
            )
        )
    before, after = upgrade(engine)
    assert before == LEGACY and after == head_revision()
    assert set(inspect(engine).get_table_names()) >= LEGACY_TABLES
    if made_by == "first release":
        assert differences(engine) == []
    with DB(engine) as db:
        assert db.get(User, 1).login == "old"  # type: ignore[union-attr]
    engine.dispose()


def test_legacy_tables_are_those_of_the_legacy_revision(tmp_path: Path) -> None:
    from app.migrate import LEGACY, LEGACY_TABLES

    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    upgrade(engine, LEGACY)
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == LEGACY_TABLES
    engine.dispose()


def test_db_commands(tmp_path: Path) -> None:
    env = {
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    nightshift = str(Path(sys.executable).parent / "nightshift")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([nightshift, *args], env=env, capture_output=True, text=True)

    behind = run("db", "current")
    assert behind.returncode == 1 and "not migrated" in behind.stdout
    done = run("db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "migrated an empty database" in done.stdout and head_revision() in done.stdout
    assert "already at" in run("db", "upgrade").stdout
    current = run("db", "current")
    assert current.returncode == 0 and "up to date" in current.stdout
    bad = subprocess.run(
        [nightshift, "db", "upgrade"],
        env={**env, "NIGHTSHIFT_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "migrating" in bad.stderr and "failed" in bad.stderr


def test_rows_from_before_0014_get_their_event_columns_from_their_log(tmp_path: Path) -> None:
    """Revision 0014 adds the last push, the last verify run and the PR failures as columns;
    a session from before it has them filled from its events on first read, once, however
    many events came after its push."""
    from sqlmodel import Session as DB

    from app.models import PullRequest, Repo, Session, User
    from app.services.session_index import IndexWriter, verify_before
    from app.sessionstore import SessionFiles
    from workers.events import BranchPushed, ErrorRaised, Notice, VerifyCheck, VerifyRan
    from workers.redact import Redactor

    engine = control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    upgrade(engine)
    store = SessionFiles(tmp_path / "sessions", Redactor()).create("s1")
    check = VerifyCheck(command="make test", ok=True, exit_code=0, output="ok")
    store.append(VerifyRan(round=1, max_rounds=2, passed=True, checks=[check]))
    pushed = BranchPushed(branch="ns/s1", sha="a" * 40, base="main", base_sha="b" * 40)
    store.append(pushed)
    for _ in range(2):
        store.append(ErrorRaised(code="pr_failed", message="GitHub said 500"))
    store.append(VerifyRan(round=1, max_rounds=2, passed=False))  # after the push
    for n in range(5001):
        store.append(Notice(message=f"later event {n}"))
    upgrade(engine, "0013")  # a release before 0014 ...
    tables = MetaData()
    tables.reflect(engine)
    new = {"last_push", "last_verify", "pr_failures", "checks", "checks_sha"}
    with engine.begin() as conn:
        for old in (
            User(id=1, login="old", name="Old", email="old@example.com"),
            Repo(id=1, name="proj", url="/srv/proj"),
            Session(
                id="s1",
                repo_id=1,
                repo_name="proj",
                author_id=1,
                branch="ns/s1",
                head_sha="a" * 40,
            ),
            PullRequest(
                id=1,
                repo_id=1,
                number=1,
                session_id="s1",
                title="t",
                author_id=1,
                base="main",
                head="ns/s1",
                head_sha="a" * 40,
                url="/pulls/1",
            ),
        ):
            values = {k: v for k, v in old.model_dump().items() if k not in new}
            conn.execute(tables.tables[str(old.__tablename__)].insert().values(**values))
    upgrade(engine)  # ... and its rows, migrated: the columns are there, empty
    with DB(engine) as db:
        row = db.get(Session, "s1")
        pr = db.exec(select(PullRequest)).one()
    assert row is not None and row.last_push is None and row.pr_failures == 0
    assert pr.checks is None and pr.checks_sha is None

    filled = IndexWriter(engine).fill_from_log(row, store)
    assert filled.last_push is not None and filled.last_push["sha"] == "a" * 40
    assert filled.pr_failures == 2 and filled.last_verify is not None
    assert filled.last_verify["passed"] is False  # the session's last run, after the push
    with DB(engine) as db:
        kept = db.get(Session, "s1")
    assert kept is not None and kept.last_push == filled.last_push and kept.pr_failures == 2
    # The PR's checks are the run before its head was pushed, not the session's last one.
    before = verify_before(store, "a" * 40)
    assert before is not None and before["passed"] is True
    assert before["checks"][0]["command"] == "make test"
    assert verify_before(store, "c" * 40) is None
    engine.dispose()
