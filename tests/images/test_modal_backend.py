"""The Modal backend end to end against a fake of Modal's API (tests/fakes/modal_server.py):
the real `modal` client, the project's image builder, provider and agent sessions; each
"Modal sandbox" is a real bubblewrap sandbox, so commands give real output."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from grpclib import Status
from modal_proto import api_pb2

from app.schemas import RepoCreate
from images.image_jobs import build_images, maintain_pool
from images.sandboxes.base import SandboxError
from tests.factories import ApiClient, git, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.modal_server import FakeModal, fake_modal
from tests.images.conftest import commit

T = TypeVar("T")
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed")

NO_EXPIRY = -1  # what the client sends for `snapshot_filesystem(ttl=None)`
SETUP = [
    "mkdir -p build && echo built > build/out.txt",
    "mkdir -p ~/.cache/proj && echo hot > ~/.cache/proj/c",
]


@pytest.fixture
def modal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModal]:
    """The fake, and Modal's own settings pointing the client at it."""
    with fake_modal(tmp_path / "fake-modal") as fake:
        monkeypatch.setenv("MODAL_SERVER_URL", fake.url)
        yield fake
        assert fake.world.unserved == [], "the backend asked for an RPC the fake does not serve"


def _modal_settings(modal: FakeModal, **overrides: Any) -> dict[str, Any]:
    return {
        "sandbox": "modal",
        "sandbox_disk_mb": 0,
        "modal_token_id": "ak-fake-token-id",
        "modal_token_secret": "as-fake-token-secret",
        **overrides,
    }


@pytest.fixture
def mrt(make_settings: Any, modal: FakeModal) -> Iterator[Any]:
    """A runtime on the Modal backend that is built but not serving."""
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(**_modal_settings(modal, image_interval=0)))
    yield runtime
    runtime.close()


def _add(rt: Any, repo: Path, **extra: Any) -> Any:
    return rt.repos.add(RepoCreate(url=str(repo), **extra))


async def test_setup_runs_on_modal_and_its_snapshot_is_the_recorded_image(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {"README.md": "hi\n", "src/app.py": "print(1)\n"})
    _add(mrt, repo, setup=SETUP, warm=["cat build/out.txt > build/warmed.txt"])
    [result] = await build_images(mrt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    image = result.image
    assert image.backend == "modal" and image.location.startswith("im-")
    assert image.location in modal.world.images, "the image id is not one Modal made"
    assert image.sha == git(repo, "rev-parse", "main").strip()
    assert modal.world.snapshot_ttls[image.location] == NO_EXPIRY  # an image does not expire
    # The clone was uploaded into the image, and nothing of it stays on this host.
    assert any("COPY . /" in line for lines in modal.world.dockerfiles for line in lines)
    assert not (mrt.settings.data_dir / "images" / "proj").exists() or not any(
        (mrt.settings.data_dir / "images" / "proj").iterdir()
    )
    log = mrt.images.get(image.id).log
    assert "$ mkdir -p build" in log and f"modal image {image.location}" in log
    # A session's sandbox starts from that image and sees what set-up wrote.
    spec = mrt.images.specs()[0]
    acquired = await mrt.provider.starter.start(spec, cold_ok=False)
    try:
        assert acquired.mode == "image" and acquired.image.id == image.id
        assert modal.world.created[-1].image_id == image.location
        out = await acquired.sandbox.exec(["sh", "-c", "cat build/out.txt build/warmed.txt"])
        assert (out.exit_code, out.stdout) == (0, "built\nbuilt\n"), out
        assert (await acquired.sandbox.read_file("src/app.py")) == b"print(1)\n"
        status = await acquired.sandbox.exec(["git", "status", "--porcelain"])
        assert status.exit_code == 0 and "build" not in status.stdout  # set-up output excluded
    finally:
        await acquired.sandbox.terminate()
    # Modal refusing a session's sandbox is one line naming what Modal said.
    modal.world.refuse["SandboxCreateV2"] = (Status.RESOURCE_EXHAUSTED.value, "quota reached")
    with pytest.raises(SandboxError) as refused:
        await mrt.provider.starter.start(spec, cold_ok=False)
    assert str(refused.value) == "modal could not create a sandbox: quota reached"


async def test_declared_image_and_base_setting_reach_modal_as_registry_images(
    make_settings: Any, modal: FakeModal, tmp_path: Path
) -> None:
    from app.runtime import build_runtime

    rt = build_runtime(
        make_settings(**_modal_settings(modal, modal_base_image="registry.example/team/base:3"))
    )
    try:
        plain = make_repo(tmp_path, "plain")
        _add(rt, plain, setup=["echo ok > ok.txt"])
        declared = make_repo(tmp_path, "declared")
        _add(rt, declared, image="ghcr.io/acme/devbox:1.2", setup=["echo ok > ok.txt"])
        results = await build_images(rt.image_jobs, ["plain", "declared"])
        assert [r.outcome for r in results] == ["built", "built"], [r.message for r in results]
        assert modal.world.registry_refs.count("registry.example/team/base:3") >= 1
        assert "ghcr.io/acme/devbox:1.2" in modal.world.registry_refs
        assert all(r.image.location.startswith("im-") for r in results)
        log = rt.images.get(results[1].image.id).log
        assert "environment: image ghcr.io/acme/devbox:1.2" in log
    finally:
        rt.close()


def test_a_malformed_base_image_setting_is_refused_in_one_line(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="NIGHTSHIFT_MODAL_BASE_IMAGE: image reference") as got:
        make_settings(sandbox="modal", sandbox_disk_mb=0, modal_base_image="debian: slim")
    assert "contains whitespace" in str(got.value)
    assert make_settings(modal_base_image="  ").sandbox_config().modal_base_image == ""
    config = make_settings(modal_base_image="ghcr.io/acme/base:1").sandbox_config()
    assert config.modal_base_image == "ghcr.io/acme/base:1"


async def test_dockerfile_is_built_by_modal_and_one_outside_the_repo_is_refused(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    dockerfile = "FROM docker.io/library/debian:bookworm\nCOPY tools/ /workspace/tools\n"
    repo = make_repo(tmp_path, "proj", {"env/Dockerfile": dockerfile, "tools/x.sh": "echo x\n"})
    _add(mrt, repo, dockerfile="env/Dockerfile", context=".", setup=["test -f tools/x.sh"])
    [result] = await build_images(mrt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    assert "docker.io/library/debian:bookworm" in modal.world.registry_refs
    assert any("COPY tools/ /workspace/tools" in lines for lines in modal.world.dockerfiles)
    # A Dockerfile that is a symlink out of the repository is not read from the host.
    (tmp_path / "host-secret").write_text("FROM secret\n")
    git(repo, "rm", "-q", "env/Dockerfile")
    (repo / "env" / "Dockerfile").parent.mkdir(exist_ok=True)
    (repo / "env" / "Dockerfile").symlink_to(tmp_path / "host-secret")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=D", "-c", "user.email=d@example.com", "commit", "-qm", "link")
    before = len(modal.world.dockerfiles)
    [bad] = await build_images(mrt.image_jobs, ["proj"])
    assert bad.outcome == "failed"
    assert bad.message == "the dockerfile Dockerfile resolves outside the repository"
    assert len(modal.world.dockerfiles) == before
    assert mrt.image_registry.newest("proj").id == result.image.id


async def test_network_is_blocked_unless_the_repo_allows_hosts_and_no_credential_is_sent(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    closed = make_repo(tmp_path, "closed")
    _add(mrt, closed, setup=["true"])
    opened = make_repo(tmp_path, "opened")
    _add(mrt, opened, setup=["true"], egress=["pypi.org"], env={"PIP_NO_INPUT": "1"})
    results = await build_images(mrt.image_jobs, ["closed", "opened"])
    assert [r.outcome for r in results] == ["built", "built"], [r.message for r in results]
    closed_box, opened_box = modal.world.created[-2:]
    blocked, allowlist = api_pb2.NetworkAccess.BLOCKED, api_pb2.NetworkAccess.ALLOWLIST
    assert closed_box.network_access.network_access_type == blocked
    assert opened_box.network_access.network_access_type == allowlist
    assert list(opened_box.network_access.allowed_domains) == ["pypi.org"]
    for box in (closed_box, opened_box):
        assert not box.secret_ids
        env = dict(box.environment_variables.contents)
        assert not any(key.startswith("MODAL_") for key in env), env


async def test_symlinks_out_of_the_clone_are_not_uploaded(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    secret = tmp_path / "host-only.txt"
    secret.write_text("host secret 7f3a\n")
    repo = make_repo(tmp_path, "proj", {"inside.txt": "in the repo\n"})
    (repo / "leak").symlink_to(secret)
    (repo / "near").symlink_to("inside.txt")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=D", "-c", "user.email=d@example.com", "commit", "-qm", "links")
    _add(mrt, repo, setup=["grep -q 'in the repo' near"])  # a copy: uploads follow links
    [result] = await build_images(mrt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    assert b"in the repo\n" in modal.world.blobs.values()
    assert all(b"host secret" not in data for data in modal.world.blobs.values())


async def test_failing_setup_fails_the_build_in_one_line_and_keeps_the_image(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(mrt, repo, setup=["echo fine > fine.txt"])
    [good] = await build_images(mrt.image_jobs)
    assert good.outcome == "built", good.message
    commit(repo, {".nightshift.toml": 'setup = ["echo broken dependency >&2; exit 3"]\n'})
    sandboxes = len(modal.world.sandboxes)
    [bad] = await build_images(mrt.image_jobs)
    assert bad.outcome == "failed"
    assert "\n" not in bad.message and "exited 3" in bad.message, bad.message
    assert "broken dependency" in bad.message
    assert mrt.image_registry.newest("proj").id == good.image.id
    # The build sandbox was ended, and no image was snapshotted from it.
    assert len(modal.world.sandboxes) == sandboxes + 1
    assert all(s.terminated for s in modal.world.sandboxes.values())


@pytest.mark.parametrize(
    ("rpc", "status", "said"),
    [
        ("SandboxCreateV2", Status.RESOURCE_EXHAUSTED, "workspace sandbox quota reached"),
        ("ImageGetOrCreate", Status.PERMISSION_DENIED, "token is not allowed to build images"),
    ],
)
async def test_modal_refusing_is_one_clear_line(
    mrt: Any, modal: FakeModal, tmp_path: Path, rpc: str, status: Status, said: str
) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(mrt, repo, setup=["true"])
    [good] = await build_images(mrt.image_jobs)
    assert good.outcome == "built", good.message
    commit(repo, {"more.txt": "more\n"})
    modal.world.refuse[rpc] = (status.value, said)
    [bad] = await build_images(mrt.image_jobs)
    assert bad.outcome == "failed"
    assert bad.message.startswith("modal could not ") and said in bad.message, bad.message
    assert "\n" not in bad.message
    assert mrt.image_registry.newest("proj").id == good.image.id


def test_pool_starts_from_the_modal_image_and_a_push_build_replaces_it(
    make_settings: Any, modal: FakeModal, tmp_path: Path
) -> None:
    from app.runtime import build_runtime

    rt = build_runtime(
        make_settings(**_modal_settings(modal, image_interval=0, pool_interval=3600, pool_ttl=3600))
    )
    rt.start()
    try:
        repo = make_repo(tmp_path, "proj")
        rt.repos.add(RepoCreate(url=str(repo), pool_size=1, setup=["echo s > s.txt"]))
        first = wait_for(lambda: rt.image_registry.newest("proj"), 60, "the first image")
        assert first.location.startswith("im-")
        on_loop(rt, lambda: maintain_pool(rt.image_jobs))
        [entry] = wait_for(lambda: _warm(rt), 30, "a pooled sandbox")
        assert entry.image_id == first.id
        old = modal.world.sandboxes[entry.acquired.sandbox.id]
        assert old.image_id == first.location
        tip = commit(repo, {"new.txt": "new\n"})
        [built] = on_loop(rt, lambda: build_images(rt.image_jobs, ["proj"], trigger="push"))
        assert built.outcome == "built" and built.image.trigger == "push", built.message
        assert built.image.location.startswith("im-") and built.image.location != first.location
        [fresh] = wait_for(
            lambda: [e for e in _warm(rt) if e.image_id == built.image.id], 30, "a new sandbox"
        )
        assert modal.world.sandboxes[fresh.acquired.sandbox.id].image_id == built.image.location
        wait_for(lambda: old.terminated, 10, "the old pooled sandbox to end")
        head = on_loop(rt, lambda: fresh.acquired.sandbox.exec(["git", "rev-parse", "HEAD"]))
        assert head.stdout.strip() == tip
    finally:
        rt.close()


def _warm(rt: Any) -> list[Any]:
    return [e for e in rt.pool.entries("proj") if e.state == "warm"]


def on_loop(rt: Any, factory: Callable[[], Awaitable[T]]) -> T:
    return rt.executor.submit(factory).result(120)  # type: ignore[no-any-return]


async def test_an_image_build_failing_on_modal_is_one_line_with_its_step(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    _add(mrt, repo, image="ghcr.io/acme/alpine-no-apt:1", setup=["true"])
    modal.world.failing_step = "apt-get install"
    [bad] = await build_images(mrt.image_jobs)
    assert bad.outcome == "failed" and "\n" not in bad.message
    assert bad.message.startswith("modal could not build the image: Image build for im-")
    assert "apt-get install" in bad.message and "exited with status 100" in bad.message
    assert mrt.image_registry.newest("proj") is None
    assert modal.world.sandboxes == {}  # no sandbox was started on a broken image


async def test_a_cold_start_on_modal_runs_on_the_clone_and_queues_the_build(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {"README.md": "cold\n"})
    _add(mrt, repo, setup=["echo set > setup.txt"])
    spec = mrt.images.specs()[0]
    acquired = await mrt.provider.acquire(spec, label="t")
    try:
        assert acquired.mode == "cold"
        assert await acquired.sandbox.read_file("setup.txt") == b"set\n"
        assert await acquired.sandbox.read_file("README.md") == b"cold\n"
        assert modal.world.created[-1].image_id in modal.world.images
    finally:
        await acquired.sandbox.terminate()
    await mrt.provider.wait_background()
    newest = mrt.image_registry.newest("proj")
    assert newest is not None and newest.trigger == "session" and newest.location.startswith("im-")


async def test_a_cold_start_on_modal_runs_on_the_declared_environment(
    mrt: Any, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {"README.md": "cold\n"})
    _add(mrt, repo, image="ghcr.io/acme/devbox:1.2", setup=["echo set > setup.txt"])
    spec = mrt.images.specs()[0]
    acquired = await mrt.provider.acquire(spec, label="t")
    try:
        assert acquired.mode == "cold" and acquired.notes == []
        assert "ghcr.io/acme/devbox:1.2" in modal.world.registry_refs
        assert await acquired.sandbox.read_file("setup.txt") == b"set\n"
        assert await acquired.sandbox.read_file("README.md") == b"cold\n"
        assert modal.world.created[-1].image_id in modal.world.images
    finally:
        await acquired.sandbox.terminate()
    await mrt.provider.wait_background()
    newest = mrt.image_registry.newest("proj")
    assert newest is not None and newest.status == "ready", newest and newest.error
    public = mrt.images.get(newest.id)
    assert public.environment == "image ghcr.io/acme/devbox:1.2"
    assert public.size_bytes is None and public.environment_size_bytes is None  # on Modal


# ---------------------------------------------------------------- a whole session on Modal


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook, modal: FakeModal) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        **_modal_settings(modal, image_interval=0),
    )


@pytest.mark.slow
def test_a_session_runs_on_the_modal_image_and_its_follow_up_on_the_snapshot(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, modal: FakeModal, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo, setup=["echo from-setup > .setup-mark"])  # adding it starts a build
    image = wait_for(lambda: runtime.image_registry.newest("proj"), 60, "the image build")
    assert image.location.startswith("im-")
    openai_fake.script(
        "notes",
        Turn.tool("run", command="cat .setup-mark"),
        Turn.tool("write_file", "Writing.", path="NOTES.md", content="on modal\n"),
        Turn.tool("finish", summary="Wrote NOTES.md.", title="Add notes"),
    )
    session = api.create("proj", "add notes")
    done = api.wait_status(session["id"], "finished", "failed")
    events = api.events(session["id"])
    assert done["status"] == "finished", [e.get("message") for e in events if e["type"] == "error"]
    ran = next(e for e in events if e["type"] == "tool_result" and e["name"] == "run")
    assert ran["exit_code"] == 0 and "from-setup" in ran["output"]
    assert git(repo, "show", f"{done['branch']}:NOTES.md") == "on modal\n"
    assert image.location in [d.image_id for d in modal.world.created]
    snapshots = [e for e in events if e["type"] == "snapshot"]
    assert snapshots, "the session's sandbox was not snapshotted for follow-ups"
    # A session's snapshot keeps the configured ttl; the repo's image has none.
    ttl = runtime.settings.sandbox_config().snapshot_ttl_s
    assert modal.world.snapshot_ttls[snapshots[-1]["snapshot"]["location"]] == ttl
    # The follow-up starts from that snapshot and sees the first prompt's file.
    openai_fake.script(
        "read them back",
        Turn.tool("run", command="cat NOTES.md"),
        Turn.tool("finish", summary="Read it.", title="Read notes"),
    )
    r = api.http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "read them back"})
    assert r.status_code == 202, r.text
    wait_for(
        lambda: len([e for e in api.events(session["id"]) if e["type"] == "prompt_finished"]) == 2,
        60,
        "the follow-up",
    )
    events = api.events(session["id"])
    ready = [e for e in events if e["type"] == "sandbox_ready"]
    assert ready[-1].get("mode") == "snapshot", ready
    runs = [e for e in events if e["type"] == "tool_result" and e["name"] == "run"]
    assert "on modal" in runs[-1]["output"], runs[-1]
