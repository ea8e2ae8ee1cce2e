"""Declared images are resolved, pulled and unpacked once per digest, from a real registry on
127.0.0.1; bad references, missing images, tampered blobs and oversized images fail with one
line and leave nothing behind."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from images.oci_store import OciStore
from images.setup import BuildError
from tests.fakes.registry import FakeRegistry, missing_tool, push_image, start_registry
from tests.images.oci_fixtures import registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))


def test_pull_unpacks_once_per_digest(tool_image: str, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "rootfs")
    env = store.pull(tool_image)
    rootfs = Path(env.rootfs)
    assert env.digest.startswith("sha256:")
    assert (rootfs / "usr/bin/only-in-image").read_text().endswith("echo from-image\n")
    assert (rootfs / "bin/busybox").is_file()
    assert env.env["PATH"] == "/opt/tools:/usr/bin:/bin"
    assert env.env["GREETING"] == "hi"
    assert rootfs.parent == store.path(env.digest)
    assert not os.stat(rootfs.parent).st_mode & 0o222  # read-only directory
    marker = rootfs.stat().st_mtime_ns
    again = store.pull(tool_image)
    assert again == env
    assert rootfs.stat().st_mtime_ns == marker
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".")] == [
        rootfs.parent.name
    ]


def test_unchanged_digest_is_not_pulled_again(
    tool_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OciStore(tmp_path / "rootfs")
    store.pull(tool_image)
    calls: list[list[str]] = []
    real_run = subprocess.run

    def record(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", record)
    store.pull(tool_image)
    assert calls and all("copy" not in argv for argv in calls)
    assert all("umoci" not in argv[0] for argv in calls)


def test_two_pulls_at_once_unpack_once(tool_image: str, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "rootfs")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(store.pull(tool_image)))]
    threads.append(threading.Thread(target=lambda: results.append(store.pull(tool_image))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".unpack-")]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Not A Ref", "whitespace"),
        ("UPPER/case", "lowercase"),
        ("127.0.0.1:1/nothing:here", "127.0.0.1:1"),
    ],
)
def test_bad_references_fail_with_one_line(ref: str, expected: str, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "rootfs")
    with pytest.raises(BuildError) as err:
        store.pull(ref)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "rootfs").exists() or not list((tmp_path / "rootfs").iterdir())


def test_missing_image_fails(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = OciStore(tmp_path / "rootfs")
    with pytest.raises(BuildError) as err:
        store.pull(f"{registry.host}/team/absent:1")
    assert "team/absent" in str(err.value)
    assert "\n" not in str(err.value)


def test_image_over_the_size_limit_is_refused_before_pulling(
    tool_image: str, tmp_path: Path
) -> None:
    store = OciStore(tmp_path / "rootfs", max_mb=0)
    with pytest.raises(BuildError, match="NIGHTSHIFT_IMAGE_MAX_MB=0"):
        store.pull(tool_image)
    assert not [p for p in store.root.glob("*")] if store.root.exists() else True


def test_missing_auth_file_is_named(tool_image: str, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "rootfs", auth_file=tmp_path / "nope.json")
    with pytest.raises(BuildError, match="NIGHTSHIFT_REGISTRY_AUTH"):
        store.pull(tool_image)


def test_missing_tool_is_named(
    tool_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match="skopeo is not installed"):
        OciStore(tmp_path / "rootfs").pull(tool_image)


def test_tampered_layer_is_refused(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = push_image(
        registry, tmp_path, "team/tampered:1", {"/usr/bin/marker": f"#!/bin/sh\n# {time.time()}\n"}
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    layer = json.loads(raw)["layers"][0]["digest"]
    blob = registry.blob_path(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    store = OciStore(tmp_path / "rootfs")
    with pytest.raises(BuildError) as err:
        store.pull(ref)
    assert "\n" not in str(err.value)
    assert not [p for p in store.root.iterdir() if not p.name.startswith(".")]


def test_private_registry_needs_the_auth_file(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "private", users={"puller": "s3cret"})
    try:
        ref = push_image(
            reg, tmp_path, "team/private:1", {"/usr/bin/p": "#!/bin/sh\n"}, creds="puller:s3cret"
        )
        with pytest.raises(BuildError) as refused:
            OciStore(tmp_path / "rootfs").pull(ref)
        assert "\n" not in str(refused.value) and ref in str(refused.value)
        auth = tmp_path / "auth.json"
        token = base64.b64encode(b"puller:s3cret").decode()
        auth.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
        env = OciStore(tmp_path / "rootfs", auth_file=auth).pull(ref)
        assert (Path(env.rootfs) / "usr/bin/p").is_file()
    finally:
        reg.stop()


def test_collect_removes_only_unused_old_images(tool_image: str, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "rootfs")
    env = store.pull(tool_image)
    assert store.collect(set(), min_age_s=3600) == []  # just unpacked: a build may use it
    assert store.collect({env.digest}, min_age_s=0) == []
    assert Path(env.rootfs).is_dir()
    assert store.collect(set(), min_age_s=0) == [env.digest]
    assert not store.path(env.digest).exists()
    assert store.pull(tool_image) == env  # pulled again when asked for again


def _loopback_name() -> str | None:
    """A name of this host, not `localhost`, that resolves to 127.0.0.1 (via /etc/hosts)."""
    name = socket.gethostname()
    try:
        return name if name != "localhost" and socket.gethostbyname(name) == "127.0.0.1" else None
    except OSError:
        return None


@pytest.mark.skipif(_loopback_name() is None, reason="this host's name is not 127.0.0.1")
def test_loopback_registries_are_plain_http_and_others_https(
    registry: FakeRegistry, tool_image: str, tmp_path: Path
) -> None:
    port = registry.host.rsplit(":", 1)[1]
    path = tool_image.split("/", 1)[1]
    # By address or as `localhost`, the registry is reached over plain HTTP, as Docker does.
    digest = OciStore(tmp_path / "a").pull(tool_image).digest
    assert OciStore(tmp_path / "b").pull(f"localhost:{port}/{path}").digest == digest
    # The same server by any other name is spoken to over HTTPS only: its plain HTTP answer
    # fails the pull in one line, and nothing is unpacked.
    store = OciStore(tmp_path / "c")
    with pytest.raises(BuildError) as refused:
        store.pull(f"{_loopback_name()}:{port}/{path}")
    message = str(refused.value)
    assert "HTTP response to HTTPS client" in message and "\n" not in message
    assert not store.root.exists() or not list(store.root.glob("sha256-*"))
