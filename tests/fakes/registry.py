"""A real OCI registry on 127.0.0.1 (Debian's `docker-registry`, storage in a temporary
directory), and tiny images built from `busybox-static` and pushed to it with umoci and
skopeo: nothing comes from the internet."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"
TOOLS = ("docker-registry", "skopeo", "umoci", "busybox")


def missing_tool() -> str | None:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it)"
    if not Path("/bin/busybox").exists() and not Path("/usr/bin/busybox").exists():
        return "busybox-static is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FakeRegistry:
    storage: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps blob `digest` on disk (to tamper with it in tests)."""
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    """Write an htpasswd file of bcrypt hashes (what the registry's htpasswd auth reads)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        lines = [
            f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
            for user, password in users.items()
        ]
    path.write_text("".join(lines))


def start_registry(workdir: Path, users: dict[str, str] | None = None) -> FakeRegistry:
    """Start a registry; with `users`, every request needs one of them (basic auth)."""
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    port = _free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if users:
        _htpasswd(workdir / "htpasswd", users)
        with config.open("a") as out:
            out.write(f"auth:\n  htpasswd:\n    realm: test\n    path: {workdir / 'htpasswd'}\n")
    # The registry holds its own copy of the log's descriptor; ours closes once it started.
    with (workdir / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log
        )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                break
        except urllib.error.HTTPError:
            break  # 401: up, and asking for credentials
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(
                    "docker-registry did not start: " + (workdir / "registry.log").read_text()
                ) from None
            time.sleep(0.05)
    return FakeRegistry(storage, port, process)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def busybox_rootfs(root: Path, extra: dict[str, str]) -> None:
    """A root filesystem of busybox and its applets, plus `extra` executable scripts."""
    busybox = Path("/bin/busybox") if Path("/bin/busybox").exists() else Path("/usr/bin/busybox")
    for sub in ("bin", "usr/bin", "etc", "tmp", "home", "root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in _run(str(busybox), "--list").split():
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc/os-release").write_text("ID=nightshift-test\n")
    for rel, text in extra.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o755)  # noqa: S103  (a tool of the test image)


def push_image(
    registry: FakeRegistry,
    workdir: Path,
    name: str,
    extra: dict[str, str],
    env: list[str] | None = None,
    creds: str | None = None,
) -> str:
    """Build a busybox image with umoci, push it as `<registry>/<name>`; returns the ref."""
    layout = workdir / f"layout-{name.replace('/', '-').replace(':', '-')}"
    bundle = workdir / f"rootfs-{name.replace('/', '-').replace(':', '-')}"
    _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", f"{layout}:img")
    busybox_rootfs(bundle, extra)
    _run("umoci", "insert", "--rootless", "--image", f"{layout}:img", str(bundle), "/")
    config = ["umoci", "config", "--image", f"{layout}:img"]
    for item in env or ["PATH=/usr/bin:/bin"]:
        config += ["--config.env", item]
    _run(*config, "--config.workingdir", "/")
    ref = f"{registry.host}/{name}"
    _run(
        "skopeo",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        *(["--dest-creds", creds] if creds else []),
        f"oci:{layout}:img",
        f"docker://{ref}",
    )
    return ref
