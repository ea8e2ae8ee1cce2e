"""A model per session, through the real API and a real agent run against the fake providers:
the list, the choice, the refusal, follow-ups, sub-sessions, and the tokens and estimated cost
the session page and the stats page show (expected totals worked out by hand below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn

pytestmark = pytest.mark.slow

MODELS = "openai:fake-model,anthropic:fake-claude,openai:fake-mini"
PRICES = "fake-model=2/8/0.5,fake-claude=3/15/0.3"  # fake-mini has no price: it costs 0


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The control DB: SQLite unless a test asks for `postgresql` (indirect parametrize)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def settings(
    make_settings: Any,
    openai_fake: ScriptBook,
    anthropic_fake: ScriptBook,
    database_url: str | None,
) -> Any:
    return make_settings(
        database_url=database_url,
        model="openai:ignored-when-models-is-set",
        models=MODELS,
        model_prices=PRICES,
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        anthropic_base_url=anthropic_fake.url,  # type: ignore[attr-defined]
        anthropic_api_key="sk-ant-test-fake-key-0123456789",
    )


def _look_and_finish(summary: str) -> list[Turn]:
    """Two model turns: one tool call, then `finish`."""
    return [Turn.tool("list_files", "Looking.", path="."), Turn.tool("finish", summary=summary)]


def test_models_are_listed_with_the_default_first(api: ApiClient) -> None:
    r = api.http.get("/api/models")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "models": [
            {"name": "openai:fake-model", "default": True},
            {"name": "anthropic:fake-claude", "default": False},
            {"name": "openai:fake-mini", "default": False},
        ],
        "default": "openai:fake-model",
    }
    assert "/api/models" in api.http.get("/openapi.json").json()["paths"]


def test_an_unknown_model_is_refused_naming_the_choices_and_creates_nothing(
    api: ApiClient, tmp_path: Path, openai_fake: ScriptBook
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    r = api.http.post(
        "/api/sessions", json={"repo": "proj", "prompt": "do it", "model": "openai:gpt-9"}
    )
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "unknown model 'openai:gpt-9'; choose one of: "
        "openai:fake-model, anthropic:fake-claude, openai:fake-mini"
    )
    assert api.http.get("/api/sessions").json()["total"] == 0
    assert openai_fake.requests == []


def test_the_session_runs_every_prompt_on_its_model_and_shows_its_usage(
    api: ApiClient, tmp_path: Path, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    anthropic_fake.cached_tokens = 40
    anthropic_fake.script("look around", *_look_and_finish("Looked."))
    anthropic_fake.script("once more", *_look_and_finish("Looked again."))
    session = api.create("proj", "look around", model="anthropic:fake-claude")
    assert session["model"] == "anthropic:fake-claude"
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    r = api.http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "once more"})
    assert r.status_code == 202, r.text
    wait_for(
        lambda: sum(e["type"] == "prompt_finished" for e in api.events(session["id"])) == 2,
        what="the follow-up to finish",
    )
    # Both prompts, two turns each, went to the Anthropic fake as `fake-claude`; none to OpenAI.
    assert [b["model"] for b in anthropic_fake.requests] == ["fake-claude"] * 4
    assert openai_fake.requests == []
    requested = [e["model"] for e in api.events(session["id"]) if e["type"] == "model_request"]
    assert requested == ["anthropic:fake-claude"] * 4
    # Every turn: 100 input tokens (40 of them cached), 20 output. At 3/15/0.3 USD per million:
    # 60 * 3 + 40 * 0.3 + 20 * 15 = 492 micro-dollars a turn, four turns.
    shown = api.session(session["id"])
    assert shown["model"] == "anthropic:fake-claude"
    assert shown["usage"] == {
        "input_tokens": 400,
        "output_tokens": 80,
        "cached_tokens": 160,
        "cost_usd": 0.001968,
    }


def test_omitting_the_model_takes_the_first_of_the_list(
    api: ApiClient, tmp_path: Path, openai_fake: ScriptBook
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("look around", *_look_and_finish("Looked."))
    session = api.create("proj", "look around")
    assert session["model"] == "openai:fake-model"
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    assert {b["model"] for b in openai_fake.requests} == {"fake-model"}
    # The runner's two turns reused the process's one client and its connection.
    assert len(openai_fake.peers) == 2 and len(set(openai_fake.peers)) == 1


def test_sub_sessions_inherit_the_model_unless_the_tool_names_one(
    api: ApiClient, tmp_path: Path, openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    anthropic_fake.script(
        "split the work",
        Turn.tool("spawn_session", prompt="child inherits"),
        Turn.tool("spawn_session", prompt="child picks", model="openai:fake-mini"),
        Turn.tool("spawn_session", prompt="child guesses", model="openai:gpt-9"),
        Turn.tool("finish", summary="Spawned."),
    )
    anthropic_fake.script("child inherits", Turn.tool("finish", summary="inherited"))
    openai_fake.script("child picks", Turn.tool("finish", summary="picked"))
    parent = api.create("proj", "split the work", model="anthropic:fake-claude")
    assert api.wait_status(parent["id"], "finished", "failed")["status"] == "finished"
    children = api.session(parent["id"])["children"]
    assert len(children) == 2  # the unknown model created nothing
    models = {api.session(c)["title"]: api.session(c)["model"] for c in children}
    assert models == {"child inherits": "anthropic:fake-claude", "child picks": "openai:fake-mini"}
    for child in children:
        assert api.wait_status(child, "finished", "failed")["status"] == "finished"
    assert [b["model"] for b in openai_fake.requests] == ["fake-mini"]
    refused = [
        e
        for e in api.events(parent["id"])
        if e["type"] == "tool_result" and e["name"] == "spawn_session" and e["is_error"]
    ]
    assert len(refused) == 1
    assert "unknown model 'openai:gpt-9'; choose one of: openai:fake-model" in refused[0]["output"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_stats_total_tokens_and_cost_per_person_and_repository(
    api: ApiClient, runtime: Any, tmp_path: Path, openai_fake: ScriptBook
) -> None:
    api.add_repo(make_repo(tmp_path, "web"))
    api.add_repo(make_repo(tmp_path, "cli"))
    bob = api.as_(make_person(runtime, "bob", "Bob Example", "bob@example.com"))
    openai_fake.script("look around", *_look_and_finish("Looked."))
    openai_fake.script("one turn", Turn.tool("finish", summary="Done."))
    runs = [
        api.create("web", "look around"),  # alice, fake-model, 2 turns
        api.create("cli", "one turn", model="openai:fake-mini"),  # alice, unpriced, 1 turn
    ]
    with bob:
        r = bob.post("/api/sessions", json={"repo": "web", "prompt": "one turn"})  # bob, 1 turn
    assert r.status_code == 201, r.text
    runs.append(r.json())
    for run in runs:
        assert api.wait_status(run["id"], "finished", "failed")["status"] == "finished"
    # Every turn: 100 input tokens, 20 output, none cached. fake-model at 2/8 USD per million:
    # 100 * 2 + 20 * 8 = 360 micro-dollars a turn; fake-mini has no price.
    stats = api.http.get("/api/stats").json()
    assert stats["usage"] == {
        "input_tokens": 400,
        "output_tokens": 80,
        "cached_tokens": 0,
        "cost_usd": 0.00108,
    }
    assert stats["usage_by_person"] == [
        {
            "name": "alice",
            "prompts": 2,
            "input_tokens": 300,
            "output_tokens": 60,
            "cached_tokens": 0,
            "cost_usd": 0.00072,
        },
        {
            "name": "bob",
            "prompts": 1,
            "input_tokens": 100,
            "output_tokens": 20,
            "cached_tokens": 0,
            "cost_usd": 0.00036,
        },
    ]
    assert stats["usage_by_repo"] == [
        {
            "name": "web",
            "prompts": 2,
            "input_tokens": 300,
            "output_tokens": 60,
            "cached_tokens": 0,
            "cost_usd": 0.00108,
        },
        {
            "name": "cli",
            "prompts": 1,
            "input_tokens": 100,
            "output_tokens": 20,
            "cached_tokens": 0,
            "cost_usd": 0.0,
        },
    ]


def test_nightshift_models_refuses_a_malformed_entry(make_settings: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"NIGHTSHIFT_MODELS entry 'gpt-4\.1'"):
        make_settings(models="openai:gpt-4.1,gpt-4.1")
    assert make_settings(model="openai:x").model_choices() == ("openai:x",)


def test_the_model_clients_live_as_long_as_the_process(
    settings: Any, tmp_path: Path, openai_fake: ScriptBook
) -> None:
    """Prompts share the process's one client per provider; closing the runtime closes it."""
    from app.runtime import build_runtime
    from app.schemas import RepoCreate

    openai_fake.script("look around", *_look_and_finish("Looked."))
    runtime = build_runtime(settings)
    runtime.start()
    try:
        runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
        person = make_person(runtime, "alice", "Alice Example", "alice@example.com")
        for _ in range(2):  # one after the other: a second session reuses the first's connection
            session_id = runtime.sessions.create(person.user, "proj", "look around").id
            wait_for(
                lambda s=session_id: runtime.sessions.get(s).status == "finished",
                what="the session to finish",
            )
        client = runtime.deps.models.client("openai")
        assert client is not None and not client.is_closed()
        assert runtime.deps.models.client("anthropic") is None  # built only when used
        assert len(openai_fake.requests) == 4 and len(set(openai_fake.peers)) == 1
    finally:
        runtime.close()
    assert client.is_closed()


def test_a_child_of_a_session_on_a_retired_model_runs_on_the_default(
    runtime: Any, tmp_path: Path
) -> None:
    from sqlalchemy import update
    from sqlmodel import Session as DB
    from sqlmodel import col

    from app.models import Session
    from app.schemas import RepoCreate
    from workers.events import Author

    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    person = make_person(runtime, "alice", "Alice Example", "alice@example.com")
    parent = runtime.sessions.create(person.user, "proj", "parent", model="openai:fake-mini")
    runtime.sessions.stop(person.user, parent.id)
    # The operator has since taken the parent's model out of NIGHTSHIFT_MODELS.
    with DB(runtime.engine) as db:
        db.execute(update(Session).where(col(Session.id) == parent.id).values(model="openai:x"))
        db.commit()
    author = Author(
        id=person.user.id, login="alice", name="Alice Example", email="alice@example.com"
    )
    child = runtime.runners.spawn(parent.id, None, "child", author)
    assert runtime.sessions.get(child).model == "openai:fake-model"
    runtime.sessions.stop(person.user, child)
