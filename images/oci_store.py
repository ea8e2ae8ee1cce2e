"""Declared OCI environments on this host: resolved, pulled and unpacked once per digest.

`OciStore.pull` resolves a reference to the digest of its manifest for this host's platform
(`skopeo inspect --raw`), refuses an image whose layers add up to more than the size limit
before a byte of them is fetched, copies it into an OCI layout (`skopeo copy`, which checks
every blob against its digest) and unpacks it with `umoci unpack --rootless` into
`<root>/<digest hex>/rootfs`. The unpack happens in a temporary directory renamed into place,
under a file lock, so two builds of one digest unpack it once; a digest already unpacked is
never fetched again (a rebuild only re-resolves the tag). The tree is shared by every repo
that declares the image and read-only to sandboxes (they mount it read-only; its files belong
to the server's user, never to the sandbox uid).

Registry credentials (`auth_file`, a containers auth.json) are given to skopeo on the host
only; nothing of them reaches a sandbox. A registry on a loopback address is reached over
plain HTTP, every other one over verified TLS.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

from images.layers import remove_tree
from images.oci import Reference, ReferenceError, parse_reference
from images.sandboxes.environment import ENVIRONMENT_FILE, ImageEnvironment
from images.setup import BuildError

DEFAULT_MAX_MB = 8192
COLLECT_MIN_AGE_S = 3600.0
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(
            f"{name} is not installed on this server: `apt-get install {name}` (needed for "
            "declared image environments)"
        )
    return path


_LOGRUS_MSG = re.compile(r'level=\w+ msg="((?:[^"\\]|\\.)*)"')


def _last_line(text: str) -> str:
    """The tool's last line; skopeo's and buildah's `time=… level=fatal msg="…"` reduced to
    the message, its quoting undone."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    line = lines[-1]
    found = _LOGRUS_MSG.search(line)
    if found:
        line = found.group(1).replace('\\"', '"').replace("\\\\", "\\")
    return line[:500]


def host_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


class OciStore:
    """Unpacked image root filesystems under `root`, one directory per manifest digest."""

    def __init__(
        self,
        root: Path,
        *,
        auth_file: Path | None = None,
        max_mb: int = DEFAULT_MAX_MB,
        timeout: float = 1800.0,
    ) -> None:
        self.root = root
        self.auth_file = auth_file
        self.max_mb = max_mb
        self.timeout = timeout

    # ------------------------------------------------------------ skopeo

    def _skopeo(self, ref: Reference, *args: str, timeout: float | None = None) -> str:
        argv = [_tool("skopeo"), *args[:1]]
        if self.auth_file is not None:
            if not self.auth_file.is_file():
                raise BuildError(f"NIGHTSHIFT_REGISTRY_AUTH: {self.auth_file} is not a file")
            argv += ["--authfile", str(self.auth_file)]
        tls = "false" if ref.plain_http else "true"
        if args[:1] == ("copy",):
            argv += [f"--src-tls-verify={tls}"]
        else:
            argv += [f"--tls-verify={tls}"]
        argv += list(args[1:])
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout or self.timeout,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)},
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"image {ref}: registry {ref.registry} did not answer") from exc
        if done.returncode != 0:
            raise BuildError(f"image {ref}: {_last_line(done.stderr)}")
        return done.stdout

    def _manifest(self, ref: Reference, target: str) -> tuple[bytes, dict[str, object]]:
        raw = self._skopeo(ref, "inspect", "--raw", f"docker://{target}", timeout=120.0)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BuildError(f"image {ref}: the registry sent a manifest that is not JSON") from exc
        if not isinstance(data, dict):
            raise BuildError(f"image {ref}: the registry sent a manifest that is not an object")
        return raw.encode(), data

    def resolve(self, text: str) -> tuple[Reference, str, int]:
        """`(reference, manifest digest for this platform, bytes of its layers)`."""
        try:
            ref = parse_reference(text)
        except ReferenceError as exc:
            raise BuildError(str(exc)) from exc
        repo = f"{ref.registry}/{ref.path}"
        raw, data = self._manifest(ref, str(ref))
        if data.get("mediaType") in _INDEX_TYPES or "manifests" in data:
            entries = data.get("manifests")
            chosen = None
            for entry in entries if isinstance(entries, list) else []:
                plat = entry.get("platform", {}) if isinstance(entry, dict) else {}
                if plat.get("os") == "linux" and plat.get("architecture") == host_arch():
                    chosen = entry
                    break
            if chosen is None:
                raise BuildError(f"image {ref}: no manifest for linux/{host_arch()}")
            raw, data = self._manifest(ref, f"{repo}@{chosen['digest']}")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise BuildError(f"image {ref}: the manifest lists no layers")
        size = sum(int(layer.get("size", 0)) for layer in layers if isinstance(layer, dict))
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest is not None and ref.digest != digest and "manifests" not in data:
            # A digest naming an index resolves to a platform manifest; any other must match.
            raw_index = self._skopeo(ref, "inspect", "--raw", f"docker://{ref}", timeout=120.0)
            if "sha256:" + hashlib.sha256(raw_index.encode()).hexdigest() != ref.digest:
                raise BuildError(f"image {ref}: the registry's manifest does not match its digest")
        return ref, digest, size

    # ------------------------------------------------------------ unpacking

    def path(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def present(self, digest: str) -> ImageEnvironment | None:
        directory = self.path(digest)
        if (directory / ENVIRONMENT_FILE).is_file():
            return ImageEnvironment.load(directory / ENVIRONMENT_FILE)
        return None

    def collect(self, keep: Collection[str], min_age_s: float = COLLECT_MIN_AGE_S) -> list[str]:
        """Remove unpacked images whose digest is not in `keep`, unpacked over `min_age_s`
        ago (a build that just unpacked one records its digest right after); the digests."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for child in self.root.iterdir():
            if child.name.startswith(".") or not (child / ENVIRONMENT_FILE).is_file():
                continue
            digest = ImageEnvironment.load(child / ENVIRONMENT_FILE).digest
            if digest in keep or time.time() - child.stat().st_mtime < min_age_s:
                continue
            remove_tree(child)
            removed.append(digest)
        return removed

    def pull(self, text: str) -> ImageEnvironment:
        """The unpacked environment of image reference `text`, pulled if this host lacks it."""
        ref, digest, size = self.resolve(text)
        found = self.present(digest)
        if found is not None:
            return found
        if size > self.max_mb << 20:
            raise BuildError(
                f"image {ref} is {size >> 20} MB, over NIGHTSHIFT_IMAGE_MAX_MB={self.max_mb}"
            )
        repo = f"{ref.registry}/{ref.path}"

        def fetch(layout: Path) -> None:
            self._skopeo(ref, "copy", "--quiet", f"docker://{repo}@{digest}", f"oci:{layout}:img")

        return self._unpack_once(digest, str(ref), fetch)

    def unpack_layout(self, layout: Path, reference: str) -> ImageEnvironment:
        """Unpack the image tagged `img` in a local OCI layout (a Dockerfile build's output)."""
        index = json.loads((layout / "index.json").read_text())
        digest = None
        for entry in index.get("manifests", []):
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == "img":
                digest = entry["digest"]
        if digest is None:
            raise BuildError(f"{reference}: the build produced no image")
        found = self.present(digest)
        if found is not None:
            return found
        return self._unpack_once(digest, reference, lambda target: shutil.copytree(layout, target))

    def _unpack_once(
        self, digest: str, reference: str, fetch: Callable[[Path], object]
    ) -> ImageEnvironment:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f".{digest.replace(':', '-')}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            found = self.present(digest)
            if found is not None:  # another build unpacked it while we waited
                return found
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".unpack-") as tmp:
                layout, bundle = Path(tmp) / "layout", Path(tmp) / "bundle"
                fetch(layout)
                self._umoci(layout, bundle, reference)
                config = json.loads((bundle / "config.json").read_text())
                process = config.get("process", {})
                env = dict(item.split("=", 1) for item in process.get("env", []) if "=" in item)
                final = self.path(digest)
                staged = Path(tmp) / "final"
                staged.mkdir()
                os.replace(bundle / "rootfs", staged / "rootfs")
                found = ImageEnvironment(
                    digest=digest,
                    reference=reference,
                    rootfs=str(final / "rootfs"),
                    env=env,
                    workdir=str(process.get("cwd", "")),
                )
                (staged / ENVIRONMENT_FILE).write_text(json.dumps(asdict(found)))
                os.chmod(staged / "rootfs", 0o755)  # noqa: S103  (an image root is 0755)
                os.chmod(staged, 0o555)  # noqa: S103  (shared and read-only)
                os.replace(staged, final)
            return found
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def build(self, workspace: Path, dockerfile: str, context: str) -> ImageEnvironment:
        """Build the repository's Dockerfile with buildah into an OCI layout, and unpack it.

        Its base images are pulled first (with the registry settings of a pull); the build
        itself then runs in a network namespace of its own (`unshare --net`: chroot isolation
        cannot cut RUN steps off otherwise) and never pulls. Storage is a throwaway directory.
        """
        file, ctx = workspace / dockerfile, workspace / context
        for path, what in ((file, "dockerfile"), (ctx, "context")):
            if not path.resolve().is_relative_to(workspace.resolve()) or not path.exists():
                raise BuildError(f"{what} {path.relative_to(workspace)} is not in the repository")
        stages: set[str] = {"scratch"}
        bases: list[str] = []
        for line in file.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) > 1 and words[0].upper() == "FROM":
                if words[1] not in stages:
                    bases.append(words[1])
                if len(words) > 3 and words[2].upper() == "AS":
                    stages.add(words[3])
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".build-") as tmp:
            store = ["--root", f"{tmp}/storage", "--runroot", f"{tmp}/run"]
            store += ["--storage-driver", "vfs"]
            for base in bases:
                try:
                    ref = parse_reference(base)
                except ReferenceError as exc:
                    raise BuildError(f"dockerfile {dockerfile}: {exc}") from exc
                pull = ["pull", "--quiet", f"--tls-verify={str(not ref.plain_http).lower()}"]
                if self.auth_file is not None:
                    pull += ["--authfile", str(self.auth_file)]
                self._buildah(tmp, [*store, *pull, f"docker://{ref}"], f"image {ref}")
            isolate = ("unshare", "--net", *(() if os.geteuid() == 0 else ("--map-root-user",)))
            build = ["build", "--isolation", "chroot", "--pull=never", "--timestamp", "0"]
            build += ["--quiet", "-f", str(file), "-t", "nightshift-env", str(ctx)]
            self._buildah(tmp, [*store, *build], f"dockerfile {dockerfile}", isolate)
            layout = Path(tmp) / "layout"
            push = ["push", "--quiet", "nightshift-env", f"oci:{layout}:img"]
            self._buildah(tmp, [*store, *push], f"dockerfile {dockerfile}")
            return self.unpack_layout(layout, f"dockerfile {dockerfile}")

    def _buildah(self, home: str, args: list[str], what: str, prefix: tuple[str, ...] = ()) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        argv = [*prefix, _tool("buildah"), *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, check=False, timeout=self.timeout, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{what}: timed out after {self.timeout:g} s") from exc
        if done.returncode != 0:
            steps = [line for line in done.stderr.splitlines() if "STEP" in line]
            cause = steps[-1] if steps else _last_line(done.stderr)
            raise BuildError(f"{what}: {cause.strip()[:500]}")

    def _umoci(self, layout: Path, bundle: Path, reference: str) -> None:
        done = subprocess.run(
            [_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:img", str(bundle)],
            capture_output=True,
            text=True,
            check=False,
            timeout=self.timeout,
        )
        if done.returncode != 0:
            raise BuildError(f"image {reference}: unpacking failed: {_last_line(done.stderr)}")
