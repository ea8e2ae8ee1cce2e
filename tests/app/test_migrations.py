"""Control-DB migrations: they build exactly what the models describe, on SQLite and
PostgreSQL, and never a per-session table. A model change without a migration fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlmodel import SQLModel

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
