"""The Modal backend against the installed `modal` client, offline: every callable and keyword
it uses must exist there (so an upgrade that breaks us fails here), and no credential may be
handed to a sandbox. The live suite runs with NIGHTSHIFT_LIVE_MODAL=1 (test_conformance)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import modal
import pytest
from modal.container_process import ContainerProcess
from modal.io_streams import StreamReader, StreamWriter
from modal.sandbox.sandbox import SandboxFilesystem

from images.sandboxes import SandboxConfig, modal_images, modal_sandbox
from images.sandboxes import modal as backend_module
from images.sandboxes.base import (
    ImageRef,
    Limits,
    PathEscape,
    SandboxFileError,
    SandboxSpec,
    SandboxUnavailable,
)

SOURCES = [Path(m.__file__) for m in (backend_module, modal_sandbox, modal_images)]
# Where each method the backend calls lives in the client.
OWNERS: dict[str, list[Any]] = {
    "lookup": [modal.App],
    "create": [modal.Sandbox],
    "from_id": [modal.Sandbox, modal.Image],
    "exec": [modal.Sandbox],
    "snapshot_filesystem": [modal.Sandbox],
    "terminate": [modal.Sandbox],
    "read_bytes": [SandboxFilesystem],
    "write_bytes": [SandboxFilesystem],
    "wait": [ContainerProcess],
    "read": [StreamReader],
    "write": [StreamWriter],
    "write_eof": [StreamWriter],
    "drain": [StreamWriter],
    "from_credentials": [modal.Client],
    "from_env": [modal.Client],
    "debian_slim": [modal.Image],
    "from_registry": [modal.Image],
    "from_dockerfile": [modal.Image],
    "apt_install": [modal.Image],
    "run_commands": [modal.Image],
    "add_local_dir": [modal.Image],
    "build": [modal.Image],
}


def _calls() -> list[tuple[str, bool, set[str], int]]:
    """(method, via .aio, keyword names, line) of every method call on a Modal object."""
    found = []
    nodes = [n for source in SOURCES for n in ast.walk(ast.parse(source.read_text()))]
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func, aio = node.func, False
        if func.attr == "aio" and isinstance(func.value, ast.Attribute):
            func, aio = func.value, True
        names = {k.arg for k in node.keywords if k.arg is not None}
        found.append((func.attr, aio, names, node.lineno))
    return found


def test_every_modal_call_exists_with_its_keywords() -> None:
    seen = set()
    for method, aio, names, line in _calls():
        if method not in OWNERS:
            continue
        seen.add(method)
        for cls in OWNERS[method]:
            target = getattr(cls, method, None)
            assert target is not None, f"line {line}: modal.{cls.__name__} has no {method}"
            if aio:
                assert hasattr(target, "aio"), f"line {line}: {method} has no .aio"
            params = inspect.signature(target).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            missing = names - set(params)
            assert not missing, f"line {line}: {cls.__name__}.{method}() takes no {sorted(missing)}"
    assert seen == set(OWNERS), f"no longer called: {sorted(set(OWNERS) - seen)}"


def _spec(egress: tuple[str, ...] = ()) -> SandboxSpec:
    image = ImageRef("im-abc", "demo", "0" * 40, "modal", "im-abc", "modal-1", 0.0)
    return SandboxSpec(image, Limits(memory_mb=1024), env={"REPO_FLAG": "1"}, egress=egress)


@pytest.mark.parametrize("egress", [(), ("pypi.org", "files.pythonhosted.org")])
def test_sandbox_create_arguments(egress: tuple[str, ...]) -> None:
    config = SandboxConfig(
        modal_token_id="ak-secret-id", modal_token_secret="as-secret", modal_environment="dev"
    )
    kwargs = modal_sandbox.create_kwargs(_spec(egress), config, app="APP", image="IMAGE")
    params = inspect.signature(modal.Sandbox.create).parameters
    assert set(kwargs) <= set(params), set(kwargs) - set(params)
    assert "secrets" not in kwargs
    flat = repr(kwargs)
    assert "ak-secret-id" not in flat and "as-secret" not in flat
    assert kwargs["memory"] == (1024, 1024) and kwargs["workdir"] == "/workspace"
    if egress:
        assert kwargs["outbound_domain_allowlist"] == list(egress)
        assert "block_network" not in kwargs
    else:
        assert kwargs["block_network"] is True
        assert "outbound_domain_allowlist" not in kwargs


def test_commands_run_unprivileged_with_limits() -> None:
    argv = modal_sandbox.command_argv(["pytest", "-q"], pids=64, cpu_seconds=30)
    assert argv[:3] == ["setpriv", "--reuid=1000", "--regid=1000"]
    assert "--nproc=64:64" in argv and "--cpu=30:35" in argv
    assert argv[-2:] == ["pytest", "-q"]
    env = modal_sandbox.sandbox_env(_spec(), {"EXTRA": "x"})
    assert env["REPO_FLAG"] == "1" and env["EXTRA"] == "x"
    assert env["NO_COLOR"] == "1" and env["TERM"] == "dumb"
    assert not [k for k in env if k.startswith(("MODAL_", "OPENAI_", "NIGHTSHIFT_"))]


def test_paths_are_confined_to_the_workspace() -> None:
    argv = modal_sandbox.confine_cmd("src/a.py", True)
    assert argv[:2] == ["sh", "-c"] and argv[-2:] == ["-e", "/workspace/src/a.py"]
    assert (
        modal_sandbox.check_confined("/workspace/src/a.py\n", "src/a.py") == "/workspace/src/a.py"
    )
    for resolved in ("/etc/shadow", "/workspace-other/x", "/"):
        with pytest.raises(PathEscape):
            modal_sandbox.check_confined(resolved, "link")


async def test_missing_credentials_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal.config.config, "get", lambda key, *a, **k: None)
    backend = backend_module.ModalBackend(SandboxConfig())
    with pytest.raises(SandboxUnavailable, match="MODAL_TOKEN_ID"):
        await backend.client()
    assert backend.collect_snapshots(0) == []  # Modal expires snapshots by their ttl


def test_the_path_probe_refuses_fifos_and_sockets(tmp_path: Path) -> None:
    """The probe every Modal file call starts with, run here by the same `sh` and coreutils:
    a FIFO or socket is refused before anything opens it."""
    import os
    import socket
    import subprocess

    os.mkfifo(tmp_path / "trap")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "sock"))
    (tmp_path / "ok.txt").write_text("ok\n")

    def probe(rel: str, want: str = "file") -> str:
        argv = modal_sandbox.confine_cmd(rel, must_exist=True)
        argv[-1] = argv[-1].replace("/workspace", str(tmp_path))
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
        resolved, _, kind = out.partition("\n")
        modal_sandbox.check_kind(kind, rel, want)
        return resolved

    assert probe("ok.txt") == str(tmp_path / "ok.txt")
    assert probe(".", want="dir") == str(tmp_path)
    for rel, what in (("trap", "a FIFO"), ("sock", "a socket")):
        with pytest.raises(SandboxFileError, match=f"{rel} is {what}, not a regular file"):
            probe(rel)
    with pytest.raises(SandboxFileError, match="trap is a FIFO, not a directory"):
        probe("trap", want="dir")


def test_modal_refuses_a_disk_quota_it_cannot_enforce() -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(
        ValidationError, match="NIGHTSHIFT_SANDBOX_DISK_MB=10240: the Modal backend"
    ):
        Settings(sandbox="modal")
    assert Settings(sandbox="modal", sandbox_disk_mb=0).limits().disk_mb == 0
