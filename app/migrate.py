"""Control-DB migrations (alembic), on SQLite and PostgreSQL alike.

`build_runtime` and `nightshift db upgrade` call `upgrade(engine)`: it takes a lock (an
advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) so several processes starting at once
migrate one at a time, and adopts a control DB made before migrations existed by stamping the
revision `create_all` last produced. Only control tables (`app.models.CONTROL_TABLES`) are ever migrated: the
per-session SQLite files (`app.sessionstore`) have their own schema.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from app.models import CONTROL_TABLES

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
"""The first revision: the control tables of the first release."""
LEGACY = "0003"
"""The last schema `create_all` made, before migrations existed."""
LEGACY_TABLES = frozenset(
    {
        "users",
        "api_tokens",
        "repos",
        "sessions",
        "session_participants",
        "prompt_index",
        "pull_requests",
        "github_accounts",
        "github_installations",
        "github_deliveries",
        "web_sessions",
        "slack_events",
        "slack_threads",
        "slack_user_links",
        "slack_link_codes",
        "slack_channel_defaults",
        "slack_requests",
        "slack_participants",
        "repo_keywords",
        "images",
        "image_build_locks",
    }
)
"""The tables of revision LEGACY; a control DB from before migrations holds some of them."""
_PG_LOCK_KEY = 0x6E69676874  # "night": one advisory lock for every Nightshift migrator


def control_metadata() -> MetaData:
    """A MetaData holding only the control tables: what migrations must produce."""
    metadata = MetaData()
    for table in CONTROL_TABLES:
        table.to_metadata(metadata)
    return metadata


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@cache
def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(
            f"the control-DB migrations have {len(heads)} heads: {heads}; merge them"
        )
    return heads[0]


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the control DB; returns (revision before, revision after)."""
    with engine.connect() as probe:
        before = current_revision(probe)
    if revision == "head" and before == head_revision():
        return before, before
    cfg = alembic_config()
    with engine.begin() as conn:
        _lock(conn)
        cfg.attributes["connection"] = conn
        before = current_revision(conn)
        if before is None and inspect(conn).has_table("sessions"):
            _adopt(conn, cfg)
            before = LEGACY
        command.upgrade(cfg, revision)
        after = current_revision(conn)
    return before, after or ""


def _adopt(conn: Connection, cfg: Config) -> None:
    """A control DB made by `create_all`: complete it to revision LEGACY and stamp that.

    Depending on the release that made it, some of LEGACY's tables may be missing; only
    those are created.
    """
    legacy = MetaData()
    for table in CONTROL_TABLES:
        if table.name in LEGACY_TABLES:
            table.to_metadata(legacy)
    legacy.create_all(conn, checkfirst=True)
    command.stamp(cfg, LEGACY)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        _lock(conn)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def differences(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the DB match the models ([] when in sync)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        return list(compare_metadata(context, control_metadata()))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate sees control tables only; the session-file tables never enter."""
    if type_ == "table":
        return name in {t.name for t in CONTROL_TABLES}
    return True
