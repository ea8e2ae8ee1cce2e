"""Image builds on real bubblewrap sandboxes and real git: new commits, skips, failures that
keep the previous image, single flight, and collection of old images."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.schemas import RepoCreate
from images.builder import ImageBuilder
from images.image_jobs import UnknownRepo, build_images, collect_images
from images.mirror import Mirrors
from images.registry import ImageRegistry
from tests.factories import git, make_repo
from tests.images.conftest import commit

SETUP = [
    # output in the workspace and in the home directory
    "mkdir -p build && echo built > build/out.txt && mkdir -p ~/.cache/proj && echo hot > ~/.cache/proj/c",
    # a tracked file deleted, one changed, a directory replaced wholesale
    "rm gone.txt && echo more >> kept.txt && rm -rf docs && mkdir docs && echo new > docs/new.md",
]


def _files() -> dict[str, str]:
    return {"kept.txt": "kept\n", "gone.txt": "bye\n", "docs/old.md": "old\n", "README.md": "hi\n"}


def _add(rt: Any, repo: Path, **extra: Any) -> Any:
    return rt.repos.add(RepoCreate(url=str(repo), **extra))


def _image_root(record: Any) -> Path:
    return Path(record.location) / "root"


async def test_image_holds_the_setup_result_at_the_base_tip(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj", _files())
    _add(rt, repo, setup=SETUP, warm=["cat build/out.txt > build/warmed.txt"])
    [result] = await build_images(rt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    image = result.image
    assert image.status == "ready" and image.sha == git(repo, "rev-parse", "main").strip()
    assert image.runtime == rt.backend.runtime_version() and image.spec_hash
    ws = _image_root(image) / "workspace"
    assert (ws / "build" / "out.txt").read_text() == "built\n"
    assert (ws / "build" / "warmed.txt").read_text() == "built\n"
    assert (_image_root(image) / "home" / ".cache" / "proj" / "c").read_text() == "hot\n"
    assert not (ws / "gone.txt").exists()
    assert (ws / "kept.txt").read_text() == "kept\nmore\n"
    assert sorted(p.name for p in (ws / "docs").iterdir()) == ["new.md"]
    assert (ws / ".git").is_dir()
    # The log tells what ran.
    log = rt.images.get(image.id).log
    assert "$ mkdir -p build" in log and "→ exit 0" in log
    # A sandbox from the image sees the same tree.
    spec = rt.images.specs()[0]
    acquired = await rt.provider.starter.start(spec, cold_ok=False)
    try:
        assert acquired.mode == "image" and acquired.image.id == image.id
        out = await acquired.sandbox.exec(["bash", "-c", "cat build/out.txt ~/.cache/proj/c"])
        assert out.stdout == "built\nhot\n"
        status = await acquired.sandbox.exec(["git", "status", "--porcelain"])
        assert "gone.txt" in status.stdout  # the agent sees set-up changes as changes
        assert "build" not in status.stdout  # but not what set-up created
    finally:
        await acquired.sandbox.terminate()


async def test_new_commit_is_built_and_unchanged_tip_is_skipped(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(rt, repo, setup=["echo ready > .ready"])
    [first] = await build_images(rt.image_jobs)
    assert first.outcome == "built"
    [again] = await build_images(rt.image_jobs)
    assert again.outcome == "skipped" and again.image.id == first.image.id
    assert "is current" in again.message
    assert len(rt.image_registry.history("proj")) == 1  # a skip leaves no build record behind
    tip = commit(repo, {"new.py": "print('new')\n"})
    [second] = await build_images(rt.image_jobs)
    assert second.outcome == "built" and second.image.sha == tip
    assert (_image_root(second.image) / "workspace" / "new.py").is_file()
    newest = rt.image_registry.newest("proj")
    assert newest is not None and newest.id == second.image.id
    # A changed spec (not only a new commit) rebuilds too.
    commit(repo, {".nightshift.toml": 'setup = ["echo other > .ready"]\n'})
    [third] = await build_images(rt.image_jobs)
    assert third.outcome == "built"
    assert (_image_root(third.image) / "workspace" / ".ready").read_text() == "other\n"


async def test_failing_setup_keeps_the_previous_image_and_records_the_log(
    rt: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(rt, repo, setup=["true"])
    [good] = await build_images(rt.image_jobs)
    assert good.outcome == "built"
    commit(
        repo,
        {".nightshift.toml": 'setup = ["echo installing", "echo broken dependency >&2; exit 3"]\n'},
    )
    [bad] = await build_images(rt.image_jobs)
    assert bad.outcome == "failed"
    assert "setup command `echo broken dependency >&2; exit 3` exited 3" in bad.message
    assert "broken dependency" in bad.message
    failed = rt.images.get(bad.image.id)
    assert failed.status == "failed" and "installing" in failed.log and "→ exit 3" in failed.log
    newest = rt.image_registry.newest("proj")
    assert newest is not None and newest.id == good.image.id
    assert _image_root(newest).is_dir()
    # No half-built directory is left behind.
    assert [p.name for p in (rt.settings.data_dir / "images" / "proj").iterdir()] == [newest.id]
    # Listing shows the log of the failure, not of the success.
    listed = {i.id: i for i in rt.images.images("proj")}
    assert listed[bad.image.id].log and listed[good.image.id].log is None


async def test_malformed_spec_file_and_egress_fail_clearly(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(rt, repo)
    [good] = await build_images(rt.image_jobs)
    commit(repo, {".nightshift.toml": 'setup = ["ok"]\nwarm = "not a list"\n'})
    [bad] = await build_images(rt.image_jobs)
    assert bad.outcome == "failed"
    assert bad.message == (
        ".nightshift.toml line 2: warm must be a list of command strings, got str"
    )
    assert rt.image_registry.newest("proj").id == good.image.id
    # Egress goes through the allowlisting proxy: set-up sees it, the build succeeds.
    commit(
        repo,
        {".nightshift.toml": 'egress = ["pypi.org"]\nsetup = ["test -n \\"$HTTPS_PROXY\\""]\n'},
    )
    [egress] = await build_images(rt.image_jobs)
    assert egress.outcome == "built", egress.message
    assert rt.image_registry.newest("proj").id == egress.image.id


async def test_builds_are_single_flight_across_builders(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(rt, repo, setup=["sleep 0.5"])
    spec = rt.images.specs()[0]
    # A second builder, as another process would have: same control DB, its own holder id.
    other = ImageBuilder(
        ImageRegistry(rt.engine, rt.backend.name, rt.backend.runtime_version()),
        rt.backend,
        rt.settings.data_dir / "images",
        Mirrors(tmp_path / "other-mirrors"),
        rt.forge_for,
        rt.settings.limits(),
        getattr(rt.backend, "owner", None),
    )
    results = await asyncio.gather(
        rt.builder.build(spec, force=True), other.build(spec, force=True)
    )
    assert sorted(r.outcome for r in results) == ["built", "busy"]
    busy = next(r for r in results if r.outcome == "busy")
    assert "another build of proj is running" in busy.message
    # The lock is released afterwards: the other builder now sees the image is current.
    assert (await other.build(spec)).outcome == "skipped"


async def test_old_images_are_collected_unless_in_use(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(rt, repo)
    [first] = await build_images(rt.image_jobs)
    spec = rt.images.specs()[0]
    held = await rt.provider.starter.start(spec, cold_ok=False)  # a live sandbox on the first image
    try:
        commit(repo, {"a": "1"})
        [second] = await build_images(rt.image_jobs)
        commit(repo, {"b": "2"})
        [third] = await build_images(rt.image_jobs)  # keep=2: the first is past it, but used
        assert rt.image_registry.get(first.image.id).status == "ready"
    finally:
        await held.sandbox.terminate()
    collected = await collect_images(rt.image_jobs)
    assert collected == [first.image.id]
    assert rt.image_registry.get(first.image.id).status == "collected"
    assert not Path(first.image.location).exists()
    assert {second.image.id, third.image.id} <= {
        r.id for r in rt.image_registry.history("proj") if r.status == "ready"
    }


async def test_an_image_a_start_takes_while_it_is_being_collected_is_kept(
    rt: Any, tmp_path: Path
) -> None:
    """Collection asks what is in use again after marking an image collected: a start that
    chose the image in between (and pinned it) keeps it, ready and on disk; a start that
    chooses after the mark sees it and takes another image or a cold clone."""
    _add(rt, make_repo(tmp_path, "proj"))
    [built] = await build_images(rt.image_jobs)
    image = built.image.id
    asked: list[set[str]] = []

    def in_use() -> set[str]:  # a start pins the image between the two questions
        asked.append({image} if asked else set())
        return asked[-1]

    assert await rt.builder.collect("proj", 0, in_use) == []
    assert len(asked) == 2
    record = rt.image_registry.get(image)
    assert record.status == "ready" and _image_root(record).is_dir()
    # Marked collected (its tree not yet deleted): a start does not stand on it.
    rt.image_registry.save(record, status="collected")
    spec = rt.images.specs()[0]
    assert rt.provider.starter.usable_image(spec) is None
    with pytest.raises(Exception, match="no image for its current spec"):
        await rt.provider.starter.start(spec, cold_ok=False)


async def test_unknown_repo_is_refused(rt: Any) -> None:
    with pytest.raises(UnknownRepo, match="unknown repo 'nope'"):
        await build_images(rt.image_jobs, ["nope"])


@pytest.mark.postgres
def test_build_lock_is_a_lease_on_postgres(postgres_url: str) -> None:
    from app.db import control_engine
    from app.wiring import init_control_db

    engine = control_engine(postgres_url)
    try:
        init_control_db(engine)
        one = ImageRegistry(engine, "bwrap", "v1", host="h")
        two = ImageRegistry(engine, "bwrap", "v1", host="h")
        assert one.acquire_lock("proj", "beat-1", ttl=30)
        assert not two.acquire_lock("proj", "beat-2", ttl=30)
        assert one.acquire_lock("proj", "beat-1", ttl=30)  # re-entrant for its holder
        assert two.acquire_lock("other", "beat-2", ttl=30)  # per repo
        one.release_lock("proj", "beat-1")
        assert two.acquire_lock("proj", "beat-2", ttl=-1)  # free again; taken with a dead lease
        assert one.acquire_lock("proj", "beat-1", ttl=30)  # an expired lease is taken over
    finally:
        engine.dispose()
