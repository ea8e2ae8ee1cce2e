"""`nightshift db upgrade|current`: the control database's migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from app.commands.common import console, fail, load_settings

app = typer.Typer(help="The control database (SQLite or PostgreSQL) and its migrations.")


@app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Apply the control-DB migrations (SQLite or PostgreSQL, from NIGHTSHIFT_DATABASE_URL)."""
    from app.db import control_engine
    from app.migrate import upgrade

    settings = load_settings()
    settings.data_dir.resolve().mkdir(parents=True, exist_ok=True)
    engine = control_engine(settings.control_db_url)
    try:
        before, after = upgrade(engine, revision)
    except Exception as exc:
        fail(f"migrating {engine.url.render_as_string(hide_password=True)} failed: {exc}")
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        console.print(f"{where}: already at {after}", highlight=False)
    else:
        console.print(
            f"{where}: migrated {before or 'an empty database'} → {after}", highlight=False
        )


@app.command("current")
def db_current() -> None:
    """Print the control DB's migration revision and whether it matches the code."""
    from app.db import control_engine
    from app.migrate import current_revision, head_revision

    settings = load_settings()
    engine = control_engine(settings.control_db_url)
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
    except Exception as exc:
        fail(f"reading the control DB failed: {exc}")
    finally:
        engine.dispose()
    head = head_revision()
    state = "up to date" if current == head else f"behind: run `nightshift db upgrade` ({head})"
    console.print(f"{current or 'not migrated'} ({state})", highlight=False)
    if current != head:
        raise typer.Exit(1)
