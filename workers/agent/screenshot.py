"""The `screenshot` tool: a page as the sandbox sees it, kept for people and shown to the model.

Headless Chromium runs INSIDE the sandbox, as one more command: it sees only what the sandbox
sees (its loopback, where a background job serves the app, and through the egress proxy the
hosts the repo allows; nothing else). The URL is checked here first so a refusal is clear;
the sandbox's network rules are what actually hold. The PNG comes back base64 on the
command's output, is checked (PNG signature, size cap, dimensions from its header), handed to
the control plane as a session artifact (`ArtifactCreated`), and returned to the model as an
image on models that take images (`integrations/llm`), as the artifact's link on others.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from images.sandboxes.base import SandboxError
from integrations.llm.types import ImagePart
from workers.agent.toolbase import Tool, ToolContext, ToolOutput
from workers.control import MAX_ARTIFACT_BYTES, ArtifactStored
from workers.errors import ControlPlaneError, ToolError
from workers.events import ArtifactCreated

MAX_SIDE = 2560
BROWSERS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
"""Tried in order inside the sandbox; Debian's /usr/bin/chromium is a wrapper script that reads
/etc/chromium.d, which a sandbox's /etc does not have, so its real binary comes first."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# $1 url, $2 width, $3 height, $4 seconds; the browsers follow. Output: the PNG, base64.
_SCRIPT = r"""
url="$1"; w="$2"; h="$3"; secs="$4"; shift 4
browser=""
for candidate in "$@"; do
  if command -v "$candidate" >/dev/null 2>&1; then browser="$candidate"; break; fi
done
[ -n "$browser" ] || { echo "no Chromium in this sandbox (looked for: $*)" >&2; exit 127; }
dir=$(mktemp -d /tmp/.nightshift-shot.XXXXXX) || exit 1
trap 'rm -rf "$dir"' EXIT
proxy=""
[ -n "$HTTP_PROXY" ] && proxy="--proxy-server=$HTTP_PROXY"
HOME="$dir" timeout -k 5 "$secs" "$browser" --headless --no-sandbox --disable-gpu \
  --disable-dev-shm-usage --hide-scrollbars --no-first-run --no-default-browser-check \
  --disable-extensions --disable-background-networking --mute-audio \
  --user-data-dir="$dir/profile" --window-size="$w,$h" --screenshot="$dir/shot.png" \
  $proxy -- "$url" >"$dir/log" 2>&1
code=$?
if [ ! -s "$dir/shot.png" ]; then
  echo "the browser made no screenshot (exit $code):" >&2
  grep -v -e dbus -e 'Fontconfig' "$dir/log" | tail -c 1500 >&2
  exit 1
fi
base64 -w0 "$dir/shot.png"
"""


class ScreenshotArgs(BaseModel):
    url: str = Field(
        min_length=1,
        max_length=2000,
        description="http(s) URL on the sandbox's loopback (e.g. a server you started with "
        "run background=true) or on a host the repo allows",
    )
    width: int = Field(1280, ge=64, le=MAX_SIDE, description="Viewport width in pixels")
    height: int = Field(800, ge=64, le=MAX_SIDE, description="Viewport height in pixels")
    timeout_s: float = Field(60, ge=5, le=180, description="How long the page may take")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allowed_hosts: list[str]) -> str:
    """The URL if the browser may be sent there, else a ToolError saying why."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower().rstrip(".")
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ToolError(f"screenshot: not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise ToolError("screenshot: only http:// and https:// URLs can be captured")
    if parts.username is not None or parts.password is not None:
        raise ToolError("screenshot: URLs with credentials are refused")
    if not host:
        raise ToolError("screenshot: the URL names no host")
    if not _is_loopback(host) and host not in allowed_hosts:
        allowed = ", ".join(allowed_hosts) or "none"
        raise ToolError(
            f"screenshot: {host} is out of the sandbox's reach; the browser runs in the "
            f"sandbox and reaches its own loopback (127.0.0.1) and the repo's allowed hosts "
            f"({allowed}) only"
        )
    return parts.geturl()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; ToolError when it is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        raise ToolError("screenshot: the browser's output is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@dataclass(frozen=True)
class Captured:
    url: str
    stored: ArtifactStored
    width: int
    height: int
    png: bytes


async def capture(ctx: ToolContext, a: ScreenshotArgs, title: str = "") -> Captured:
    """Capture `a.url` in the sandbox, keep it as an artifact and announce it (`title` names it
    in the timeline; the URL when empty)."""
    url = check_url(a.url, list(ctx.repo.egress))
    if _is_loopback((urlsplit(url).hostname or "").lower()):
        # The page is served by a background job: join its network. Where that cannot be
        # (refused with a reason when the job was started), the browser shows the refused
        # connection, which is what the sandbox sees.
        with contextlib.suppress(SandboxError):
            await ctx.sandbox.share_network()
    cap = (MAX_ARTIFACT_BYTES * 4) // 3 + 4096
    argv = ["bash", "-c", _SCRIPT, "nightshift-screenshot", url, str(a.width), str(a.height)]
    argv += [str(int(a.timeout_s)), *BROWSERS]
    try:
        result = await ctx.sandbox.exec(argv, timeout=a.timeout_s + 15, output_cap=cap)
    except SandboxError as exc:
        raise ToolError(f"screenshot: {exc}") from exc
    if result.exit_code != 0:
        raise ToolError(f"screenshot of {url} failed: {result.stderr.strip()[-1500:]}")
    if result.truncated:
        raise ToolError(f"screenshot: the image is over {MAX_ARTIFACT_BYTES} bytes")
    try:
        data = base64.b64decode(result.stdout.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ToolError("screenshot: the browser's output was not an image") from exc
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ToolError(f"screenshot: the image is over {MAX_ARTIFACT_BYTES} bytes")
    width, height = png_size(data)
    if width > MAX_SIDE * 2 or height > MAX_SIDE * 2:  # device scale may double the viewport
        raise ToolError(f"screenshot: the image is {width}x{height}, larger than any viewport")
    try:
        stored = await ctx.control.store_artifact(ctx.session_id, data)
    except ControlPlaneError as exc:
        raise ToolError(f"screenshot: the image could not be kept: {exc}") from exc
    await ctx.emit(
        ArtifactCreated(
            artifact_id=stored.id,
            url=stored.url,
            title=title or url,
            width=width,
            height=height,
            bytes=stored.bytes,
        )
    )
    return Captured(url, stored, width, height, data)


async def screenshot(ctx: ToolContext, a: ScreenshotArgs) -> ToolOutput:
    shot = await capture(ctx, a)
    size, link = f"{shot.width}x{shot.height}", shot.stored.url
    note = f"[screenshot of {shot.url}, {size}: {link}]"
    text = f"captured {shot.url} at {size} ({shot.stored.bytes} bytes), kept at {link}"
    image = ImagePart(data=base64.b64encode(shot.png).decode(), note=note)
    return ToolOutput(text, images=(image,))


SCREENSHOT = Tool(
    "screenshot",
    "Capture a web page as a PNG with a headless browser inside the sandbox (it reaches the "
    "sandbox's loopback and the repo's allowed hosts only); you see the image, people see it "
    "in the session.",
    ScreenshotArgs,
    screenshot,
)
