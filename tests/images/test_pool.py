"""The warm pool and where sandboxes come from: cold starts that queue a build, pooled
sandboxes replaced when a new image lands, expiry, atomic claims, per-caller warm-up."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.schemas import RepoCreate
from images.image_jobs import build_images, maintain_pool
from tests.factories import make_repo, wait_for
from tests.images.conftest import commit

T = TypeVar("T")


@pytest.fixture
def served(make_settings: Any) -> Iterator[Any]:
    """A started runtime (pool upkeep wired, new images replace pooled sandboxes)."""
    from app.runtime import build_runtime

    runtime = build_runtime(
        make_settings(image_interval=0, pool_interval=3600, pool_ttl=3600, warm_debounce=1.0)
    )
    runtime.start()
    yield runtime
    runtime.close()


def on_loop(rt: Any, factory: Callable[[], Awaitable[T]]) -> T:
    return rt.executor.submit(factory).result(120)  # type: ignore[no-any-return]


def warm_entries(rt: Any, repo: str) -> list[Any]:
    return [e for e in rt.pool.entries(repo) if e.state == "warm"]


def test_cold_start_runs_setup_and_queues_the_image_build(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo), setup=["echo set > setup.txt"]))
    spec = rt.images.specs()[0]

    async def cold() -> Any:
        acquired = await rt.provider.acquire(spec, label="t")
        seen = await acquired.sandbox.read_file("setup.txt")
        await acquired.sandbox.terminate()
        await rt.provider.wait_background()
        return acquired, seen

    acquired, seen = on_loop(rt, cold)
    assert acquired.mode == "cold" and seen == b"set\n"
    newest = rt.image_registry.newest("proj")
    assert newest is not None and newest.trigger == "session"

    async def next_start() -> Any:
        again = await rt.provider.acquire(spec, label="t")
        await again.sandbox.terminate()
        return again

    again = on_loop(rt, next_start)
    assert again.mode == "image" and again.image.id == newest.id


def test_pool_is_refilled_from_the_new_image(served: Any, tmp_path: Path) -> None:
    rt = served
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo), pool_size=1))
    first = wait_for(lambda: rt.image_registry.newest("proj"), 60, "the first image")
    on_loop(rt, lambda: maintain_pool(rt.image_jobs))
    [entry] = wait_for(lambda: warm_entries(rt, "proj"), 30, "a pooled sandbox")
    assert entry.image_id == first.id and entry.claimant is None
    old_sandbox = entry.acquired.sandbox.id
    tip = commit(repo, {"new.txt": "new\n"})
    [built] = on_loop(rt, lambda: build_images(rt.image_jobs, ["proj"]))
    assert built.outcome == "built" and built.image.sha == tip
    [fresh] = wait_for(
        lambda: [e for e in warm_entries(rt, "proj") if e.image_id == built.image.id],
        30,
        "a pooled sandbox from the new image",
    )
    assert len(rt.pool.entries("proj")) == 1
    wait_for(lambda: old_sandbox not in rt.backend.live, 10, "the old sandbox to end")
    # The pooled sandbox already holds the base tip.
    head = on_loop(rt, lambda: fresh.acquired.sandbox.exec(["git", "rev-parse", "HEAD"]))
    assert head.stdout.strip() == tip


def test_pooled_sandboxes_expire(make_settings: Any, tmp_path: Path) -> None:
    from app.runtime import build_runtime

    rt = build_runtime(make_settings(image_interval=0, pool_interval=3600, pool_ttl=1.0))
    rt.start()
    try:
        repo = make_repo(tmp_path, "proj")
        rt.repos.add(RepoCreate(url=str(repo), pool_size=1))
        wait_for(lambda: rt.image_registry.newest("proj"), 60, "the image")
        on_loop(rt, lambda: maintain_pool(rt.image_jobs))
        [entry] = wait_for(lambda: warm_entries(rt, "proj"), 30, "a pooled sandbox")
        first_id = entry.acquired.sandbox.id
        wait_for(lambda: entry.expires_at < time.time(), 5, "expiry")
        on_loop(rt, lambda: maintain_pool(rt.image_jobs))
        wait_for(lambda: first_id not in rt.backend.live, 10, "the expired sandbox to end")
        replaced = wait_for(lambda: warm_entries(rt, "proj"), 30, "a replacement")
        assert all(e.acquired.sandbox.id != first_id for e in replaced)
    finally:
        rt.close()


def test_a_pooled_sandbox_is_claimed_by_exactly_one_session(served: Any, tmp_path: Path) -> None:
    rt = served
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo), pool_size=1))
    wait_for(lambda: rt.image_registry.newest("proj"), 60, "the image")
    on_loop(rt, lambda: maintain_pool(rt.image_jobs))
    [entry] = wait_for(lambda: warm_entries(rt, "proj"), 30, "a pooled sandbox")
    pooled = entry.acquired.sandbox.id

    async def two_claims() -> list[Any]:
        return list(await asyncio.gather(rt.pool.claim("proj", "a"), rt.pool.claim("proj", "b")))

    claims = on_loop(rt, two_claims)
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].sandbox.id == pooled
    on_loop(rt, winners[0].sandbox.terminate)
    # What was taken is replaced.
    wait_for(
        lambda: [e for e in warm_entries(rt, "proj") if e.acquired.sandbox.id != pooled],
        30,
        "the pool to be topped up",
    )


def test_warm_up_is_per_caller_idempotent_and_debounced(served: Any, tmp_path: Path) -> None:
    rt = served
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo)))
    spec = rt.images.specs()[0]
    wait_for(lambda: rt.image_registry.newest("proj"), 60, "the image")
    first = rt.pool.request_warm(spec, "7")
    assert first.state in ("warming", "warm")
    second = rt.pool.request_warm(spec, "7")
    assert second.expires_at >= first.expires_at
    warm = wait_for(lambda: (s := rt.pool.status("proj", "7")).state == "warm" and s, 30, "warm-up")
    assert len(rt.pool.entries("proj")) == 1  # two requests, one sandbox
    assert rt.pool.request_warm(spec, "7").sandbox_id == warm.sandbox_id
    assert rt.pool.status("proj", "8").state == "cold"
    # Someone else's session does not take it; the caller's does.
    assert on_loop(rt, lambda: rt.pool.claim("proj", "8")) is None
    mine = on_loop(rt, lambda: rt.pool.claim("proj", "7"))
    assert mine is not None and mine.sandbox.id == warm.sandbox_id
    assert rt.pool.status("proj", "7").state == "cold"
    on_loop(rt, mine.sandbox.terminate)


def test_failed_warm_up_is_retried_only_after_the_debounce(served: Any, tmp_path: Path) -> None:
    rt = served
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo)))
    shutil.rmtree(repo)  # the clone a cold warm-up needs now fails
    spec = rt.images.specs()[0]
    rt.pool.request_warm(spec, "7")
    failed = wait_for(
        lambda: (s := rt.pool.status("proj", "7")).state == "failed" and s, 60, "the failure"
    )
    assert failed.error, failed
    assert rt.pool.request_warm(spec, "7").state == "failed"  # within the debounce: no retry
    time.sleep(1.05)
    assert rt.pool.request_warm(spec, "7").state == "warming"  # tried again
