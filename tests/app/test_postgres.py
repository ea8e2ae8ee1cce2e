"""The control DB on the local PostgreSQL: the same flow as on SQLite."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import git, make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

pytestmark = pytest.mark.postgres


def test_session_runs_with_postgres_control_db(
    make_settings: Any, openai_fake: ScriptBook, postgres_url: str, tmp_path: Path
) -> None:
    from app.main import create_app
    from app.runtime import build_runtime

    settings = make_settings(
        database_url=postgres_url,
        model="openai:fake",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-0123456789abcdefghij",
    )
    runtime = build_runtime(settings)
    assert runtime.engine.dialect.name == "postgresql"
    runtime.start()
    try:
        person = make_person(runtime, "pat", "Pat Postgres", "pat@example.com")
        repo = make_repo(tmp_path, "pg")
        openai_fake.script(
            "postgres",
            Turn.tool("write_file", path="PG.md", content="pg\n"),
            Turn.tool("finish", summary="done", title="PG"),
        )
        with (
            BackgroundServer(create_app(runtime=runtime)) as server,
            httpx.Client(
                timeout=30, base_url=server.url, headers={"Authorization": f"Bearer {person.token}"}
            ) as http,
        ):
            assert http.post("/api/repos", json={"url": str(repo)}).status_code == 201
            session = http.post(
                "/api/sessions", json={"repo": "pg", "prompt": "postgres please"}
            ).json()
            done = wait_for(
                lambda: (
                    (s := http.get(f"/api/sessions/{session['id']}").json())["status"]
                    in ("finished", "failed")
                    and s
                ),
                30,
                "the session",
            )
            assert done["status"] == "finished"
            assert re.search(r"/pulls/\d+$", done["pr_url"]), done["pr_url"]
            listed = http.get(
                "/api/sessions", params={"author": "pat", "status": "finished"}
            ).json()
            assert listed["total"] == 1
            assert http.get("/healthz").json()["database"] == "postgresql"
        assert (
            git(repo, "log", "-1", "--format=%an", f"nightshift/{session['id']}").strip()
            == "Pat Postgres"
        )
    finally:
        runtime.close()
