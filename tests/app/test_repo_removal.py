"""Removing a registered repo (`DELETE /api/repos/{repo}`, `nightshift repos remove`): it is
no longer listed, built, warmed or given work from any surface, its sessions and pull requests
stay readable, another process sees the removal within its refresh, and registering the name
again brings the row back with the new registration's fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import GitHubEnv
from tests.app.test_github_triggers import (
    REPO,
    _deliver,
    _env,
    _ignored,
    _prompts,
    _session_with_pr,
    _sessions,
    _sign_in,
)
from tests.app.test_images_api import settings
from tests.app.test_repo_changes import read_deps
from tests.factories import ApiClient, make_repo, nightshift, wait_for
from tests.fakes import github_payloads as payloads
from tests.fakes.llm import ScriptBook, Turn
from tests.images.test_pool import on_loop, served, warm_entries

__all__ = ["served", "settings"]  # fixtures: periodic builds off, no warm pool refills

pytestmark = pytest.mark.slow


def _finished_session(api: ApiClient, openai_fake: ScriptBook, repo: str, prompt: str) -> str:
    openai_fake.script(prompt, Turn.tool("finish", summary="looked"))
    session = api.create(repo, prompt)
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    return str(session["id"])


def _names(api: ApiClient, **params: Any) -> list[str]:
    r = api.http.get("/api/repos", params=params)
    assert r.status_code == 200, r.text
    return [repo["name"] for repo in r.json()]


def _refused(r: Any, status: int, says: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert says in r.json()["detail"], r.json()["detail"]


def test_a_removed_repo_is_unlisted_takes_no_work_and_its_history_stays_readable(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"), description="the project")
    api.add_repo(make_repo(tmp_path, "other"))
    api.ready_image("proj")  # the session stands on it (not on a cold clone)
    session_id = _finished_session(api, openai_fake, "proj", "look around")

    r = api.http.delete("/api/repos/proj")
    assert r.status_code == 200, r.text
    removed = r.json()
    assert removed["name"] == "proj" and removed["description"] == "the project"
    assert removed["removed_at"] is not None and removed["removed_at"] <= time.time()

    assert _names(api) == ["other"]
    listed = api.http.get("/api/repos", params={"removed": "true"}).json()
    assert [(r["name"], r["removed_at"] is not None) for r in listed] == [
        ("other", False),
        ("proj", True),
    ]
    # Its history: the repo, its pull requests, its builds and its sessions still answer.
    detail = api.http.get("/api/repos/proj")
    assert detail.status_code == 200, detail.text
    assert detail.json()["removed_at"] == removed["removed_at"]
    assert api.http.get("/api/repos/proj/pulls").status_code == 200
    assert api.http.get("/api/images", params={"repo": "proj"}).status_code == 200
    assert api.session(session_id)["repo"] == "proj"
    assert api.events(session_id)
    listed_sessions = api.http.get("/api/sessions", params={"repo": "proj"}).json()
    assert session_id in str(listed_sessions)

    # No new work: a session, a follow-up, a warm sandbox, a change, a build.
    _refused(
        api.http.post("/api/sessions", json={"repo": "proj", "prompt": "more"}),
        404,
        "repo 'proj' was removed on",
    )
    _refused(
        api.http.post(f"/api/sessions/{session_id}/prompts", json={"text": "and again"}),
        404,
        "repo 'proj' was removed on",
    )
    assert [p["text"] for p in api.http.get(f"/api/sessions/{session_id}/prompts").json()] == [
        "look around"
    ]
    _refused(api.http.post("/api/repos/proj/warm"), 404, "was removed")
    _refused(
        api.http.patch("/api/repos/proj", json={"description": "x"}),
        404,
        "a removed repo cannot be changed",
    )
    assert api.http.get("/api/repos/proj").json()["description"] == "the project"
    _refused(api.http.post("/api/images/build", json={"repos": ["proj"]}), 404, "was removed")
    # The image its session's sandbox (or snapshot) stands on outlives the collection that
    # deletes a removed repo's images (run here at once, as every image build runs it).
    from images.image_jobs import collect_images

    assert on_loop(runtime, lambda: collect_images(runtime.image_jobs, [], removed=["proj"])) == []
    found = api.http.get("/api/images", params={"repo": "proj"}).json()
    assert [i["status"] for i in found] == ["ready"]
    # Removing twice, or a repo that never was: 404.
    _refused(api.http.delete("/api/repos/proj"), 404, "repo 'proj' was removed on")
    _refused(api.http.delete("/api/repos/nope"), 404, "unknown repo 'nope'")
    assert _names(api) == ["other"]


def test_a_follow_up_whose_repo_is_read_again_is_taken(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """A follow-up checks its repo inside its write transaction; once the repo's cached row
    is old it is read from the control DB again, which must not wait on that transaction's
    own lock (SQLite: "database is locked" after the busy timeout, a 500)."""
    from app.services import repo_catalog

    api.add_repo(make_repo(tmp_path, "proj"))
    session_id = _finished_session(api, openai_fake, "proj", "look around")
    cache = repo_catalog._CACHES[runtime.engine]
    for known in [*cache.by_id.values(), *cache.by_name.values()]:
        known.read_at -= repo_catalog.REFRESH_S  # as if the last read were that long ago
    openai_fake.script("and again", Turn.tool("finish", summary="again"))
    r = api.http.post(f"/api/sessions/{session_id}/prompts", json={"text": "and again"})
    assert r.status_code == 202, r.text
    assert api.wait_status(session_id, "finished", "failed")["status"] == "finished"


def test_a_removed_repo_is_no_longer_built_or_pooled(
    api: ApiClient, runtime: Any, tmp_path: Path
) -> None:
    def images(repo: str, trigger: str) -> list[dict[str, Any]]:
        found = api.http.get("/api/images", params={"repo": repo}).json()
        return [i for i in found if i["trigger"] == trigger and i["status"] != "building"]

    api.add_repo(make_repo(tmp_path, "proj"))
    api.add_repo(make_repo(tmp_path, "other"))
    for name in ("proj", "other"):
        wait_for(lambda name=name: images(name, "added"), 60, f"the first image of {name}")
    assert api.http.delete("/api/repos/proj").status_code == 200
    # What the schedule, the image jobs and the warm pool work from leaves it out ...
    assert [spec.name for spec in runtime.images.specs()] == ["other"]
    # ... so building every repo builds the others only.
    r = api.http.post("/api/images/build", json={"force": True})
    assert r.status_code == 202 and r.json()["queued"] == ["other"], r.text
    wait_for(lambda: images("other", "manual"), 60, "the forced image of other")
    assert images("proj", "manual") == []
    # Its history stays listed; its image, which nothing stands on, is deleted from disk.
    # (The build's collection runs after its image is ready, and marks before it deletes.)
    (gone,) = images("proj", "added")
    location = Path(runtime.image_registry.get(gone["id"]).location)

    def collected() -> bool:
        return images("proj", "added")[0]["status"] == "collected" and not location.exists()

    wait_for(collected, 60, "the removed repo's image to be collected")
    (kept,) = images("other", "added")  # a registered repo keeps its newest images
    assert (
        kept["status"] == "ready" and Path(runtime.image_registry.get(kept["id"]).location).is_dir()
    )


def test_a_repo_registered_while_a_build_runs_keeps_its_image(
    api: ApiClient, runtime: Any, tmp_path: Path
) -> None:
    """A build reads the registered repos when it starts; a repo registered (and built)
    while it runs is not in what it read, and must not be taken for a removed one by the
    collection that follows (it once was, and a session starting on its image failed)."""
    import dataclasses

    from images.image_jobs import build_images

    api.add_repo(make_repo(tmp_path, "web"))
    api.ready_image("web")
    early = runtime.images.specs()  # what a build of web started before cli existed read
    api.add_repo(make_repo(tmp_path, "cli"))
    image = api.ready_image("cli")
    jobs = dataclasses.replace(runtime.image_jobs, specs=lambda: early)
    on_loop(runtime, lambda: build_images(jobs, ["web"], force=True))
    after = runtime.image_registry.get(image["id"])
    assert after.status == "ready" and Path(after.location, "root").is_dir()


def test_a_removed_repos_warm_pool_is_not_kept(served: Any, tmp_path: Path) -> None:
    from app.schemas import RepoCreate
    from images.image_jobs import maintain_pool

    rt = served
    rt.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj")), pool_size=1))
    wait_for(lambda: rt.image_registry.newest("proj"), 60, "the image")
    on_loop(rt, lambda: maintain_pool(rt.image_jobs))
    [entry] = wait_for(lambda: warm_entries(rt, "proj"), 30, "a pooled sandbox")
    pooled = entry.acquired.sandbox.id
    rt.repos.remove("proj")
    on_loop(rt, lambda: maintain_pool(rt.image_jobs))  # the pool's next upkeep
    wait_for(lambda: pooled not in rt.backend.live, 10, "the pooled sandbox to end")
    assert rt.pool.entries("proj") == []


def test_another_process_sees_the_removal_within_its_refresh(runtime: Any, tmp_path: Path) -> None:
    """Another process's catalog reads the row again once its entry is `refresh_s` old; the
    removing process refuses at once. Running sessions still find the spec by id."""
    from app.db import control_engine
    from app.errors import NotFound
    from app.schemas import RepoCreate
    from app.services.repo_catalog import RepoCatalog

    path = make_repo(tmp_path, "proj")
    repo = runtime.repos.add(RepoCreate(url=str(path), setup=["a"]))
    other_engine = control_engine(runtime.settings.control_db_url)
    try:
        other = RepoCatalog(other_engine, refresh_s=0.2)
        assert other.get("proj").id == repo.id
        runtime.repos.remove("proj", who="alice")
        with pytest.raises(NotFound, match="'proj' was removed"):
            runtime.repos.get("proj")
        with pytest.raises(NotFound, match="'proj' was removed"):
            runtime.images.repos.get("proj")  # the images' catalog too
        assert other.list() == []  # lists always read the control DB

        def refused() -> bool:
            try:
                other.get("proj")
            except NotFound as exc:
                return "was removed" in str(exc)
            return False

        wait_for(refused, 5, "the other process to see the removal")
        with pytest.raises(NotFound, match="was removed"):
            other.check_open(repo.id)
        assert other.spec_by_id(repo.id).setup == ["a"]  # a running session's lookup
        assert other.get("proj", removed=True).removed_at is not None

        runtime.repos.add(RepoCreate(url=str(path), setup=["b"]))
        assert runtime.repos.get("proj").setup == ["b"]  # at once, in this process
        wait_for(lambda: other.spec_by_id(repo.id).setup == ["b"], 5, "the other process")
        assert other.get("proj").removed_at is None
    finally:
        other_engine.dispose()


def test_registering_a_removed_name_again_brings_it_back_with_the_new_fields(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    path = make_repo(tmp_path, "proj")
    api.add_repo(path, setup=["echo one > deps.txt"], description="old")
    old_id = runtime.repos.get("proj").id
    first = _finished_session(api, openai_fake, "proj", "before")
    assert api.http.delete("/api/repos/proj").status_code == 200

    r = api.http.post(
        "/api/repos",
        json={"url": str(path), "setup": ["echo two > deps.txt"], "description": "new"},
    )
    assert r.status_code == 201, r.text
    back = r.json()
    assert (back["setup"], back["description"], back["removed_at"]) == (
        ["echo two > deps.txt"],
        "new",
        None,
    )
    assert runtime.repos.get("proj").id == old_id  # the same row: its history is its own

    def built_again() -> bool:
        found = api.http.get("/api/images", params={"repo": "proj"}).json()
        added = [i for i in found if i["trigger"] == "added" and i["status"] != "building"]
        return len(added) == 2 and all(i["status"] == "ready" for i in added)

    wait_for(built_again, 60, "the image of the registration again")
    assert _names(api) == ["proj"]
    assert api.session(first)["repo"] == "proj"
    # In use again, the name is taken as before.
    _refused(api.http.post("/api/repos", json={"url": str(path)}), 409, "already exists")

    read_deps(api, openai_fake, "proj", says="two")
    openai_fake.script("once more", Turn.tool("finish", summary="done again"))
    r = api.http.post(f"/api/sessions/{first}/prompts", json={"text": "once more"})
    assert r.status_code == 202, r.text  # follow-ups are taken again
    assert api.wait_status(first, "finished", "failed")["status"] == "finished"


def test_the_operator_removes_a_repo_with_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    repo = make_repo(tmp_path / "anywhere", "proj")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return nightshift(*args, data=data)

    assert cli("repos", "add", str(repo)).returncode == 0
    answered_no = subprocess.run(
        [str(Path(sys.executable).with_name("nightshift")), "repos", "remove", "proj"],
        env={**os.environ, "NIGHTSHIFT_DATA_DIR": str(data), "COLUMNS": "200"},
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answered_no.returncode != 0 and "Remove proj" in answered_no.stdout
    assert [r["name"] for r in json.loads(cli("repos", "list", "--json").stdout)] == ["proj"]

    removed = cli("repos", "remove", "proj", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "removed proj" in removed.stdout and "repos add" in removed.stdout
    assert json.loads(cli("repos", "list", "--json").stdout) == []
    (row,) = json.loads(cli("repos", "list", "--removed", "--json").stdout)
    assert row["name"] == "proj" and row["removed_at"] is not None
    table = cli("repos", "list", "--removed").stdout
    assert "removed" in table and time.strftime("%Y-%m-%d", time.gmtime()) in table
    assert "removed on" in cli("repos", "show", "proj").stdout
    for args, says in (
        (("repos", "remove", "proj", "--yes"), "repo 'proj' was removed on"),
        (("repos", "remove", "nope", "--yes"), "unknown repo 'nope'"),
        (("repos", "set", "proj", "--base", "x"), "a removed repo cannot be changed"),
    ):
        refused = cli(*args)
        assert refused.returncode != 0 and says in refused.stderr, (args, refused.stderr)
        assert "error:" in refused.stderr
    assert cli("repos", "add", str(repo)).returncode == 0
    assert [r["name"] for r in json.loads(cli("repos", "list", "--json").stdout)] == ["proj"]


async def test_slack_neither_offers_nor_routes_to_a_removed_repo(
    runtime: Any, tmp_path: Path
) -> None:
    """Slack's classifier, picker and modal all choose among `list()`: a removed repo is not
    named, not a channel's default, not offered."""
    from app.schemas import RepoCreate
    from app.services.classifier import RepoClassifier
    from app.services.slack.routing import SlackRouting

    for name, description in (("shop", "the storefront"), ("infra", "terraform manifests")):
        path = make_repo(tmp_path, name)
        runtime.repos.add(RepoCreate(url=str(path), description=description))
    routing = SlackRouting(runtime.engine)
    routing.set_channel_default("C0001", "infra", "test")
    classifier = RepoClassifier(runtime.repos, routing, threshold=0.6)
    before = await classifier.classify("tidy up", "tidy up", channel_id="C0001")
    assert (before.repo, before.how) == ("infra", "this channel's default")

    runtime.repos.remove("infra")
    after = await classifier.classify("tidy up", "tidy up", channel_id="C0001")
    assert (after.repo, after.how) == ("shop", "the only repository")
    named = await classifier.classify("fix repo:infra", "fix repo:infra")
    assert named.repo is None and named.error is not None
    assert "I don't know `infra`" in named.error and "`shop`" in named.error


def test_github_deliveries_for_a_removed_repo_start_and_build_nothing(
    make_github_env: Any,
) -> None:
    gh: GitHubEnv = _env(make_github_env)
    author = _sign_in(gh, "octocat")
    session_id, number, sha = _session_with_pr(gh, author)
    prompts = len(_prompts(gh, session_id))
    rebuilt: list[str] = []
    gh.runtime.image_rebuild_hooks.append(lambda spec, tip: rebuilt.append(spec.name))
    gh.runtime.repos.remove(REPO, who="octocat")

    comment = gh.fake.add_issue_comment(REPO, 7, "octocat", "@nightshift-test fix the docs")
    row = _deliver(gh, "issue_comment", payloads.issue_comment(gh.fake, REPO, 7, comment))
    _ignored(row, f"{REPO} was removed from Nightshift")
    on_pr = gh.fake.add_issue_comment(REPO, number, "octocat", "@nightshift-test add a test")
    payload = payloads.issue_comment(gh.fake, REPO, number, on_pr, on_pr=True)
    _ignored(_deliver(gh, "issue_comment", payload), "was removed")
    run = payloads.check_run_json(gh.fake, REPO, 901, "tests", sha, "failure", log="boom")
    check = payloads.check_run_completed(gh.fake, REPO, run)
    _ignored(_deliver(gh, "check_run", check), "was removed")
    push = gh.fake.push_payload(REPO, "refs/heads/main", "b" * 40)
    assert _deliver(gh, "push", push).status == "done"
    assert rebuilt == []
    assert [s.id for s in _sessions(gh)] == [session_id]
    assert len(_prompts(gh, session_id)) == prompts
    assert gh.fake.replies(REPO, 7) == []

    # Its PR's fate is history, and still recorded on the session.
    pull = gh.fake.pull(REPO, number)
    pull.state = "closed"
    gh.deliver("pull_request", gh.fake.pull_payload(pull, "closed"))
    wait_for(lambda: gh.runtime.sessions.get(session_id).pr_state == "closed", 10, "closed")
