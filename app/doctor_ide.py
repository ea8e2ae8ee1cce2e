"""`nightshift doctor`'s `ide` line: can this deployment show VS Code (NIGHTSHIFT_IDE=1)?

Local sandboxes see the host's /usr read-only, so code-server installed there by `make ide`
is what they run; a repo whose environment is a declared image must carry its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
from typing import Literal
from urllib.parse import urlsplit

from app.services.ide import ide_origin
from app.settings import Settings

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
"""Where a sandbox on the host's /usr finds programs."""


async def ide_readiness(
    settings: Settings,
) -> tuple[Literal["ok", "failed", "warning", "skipped"], str, str]:
    """(status, detail, fix) of the IDE on these settings."""
    if not settings.ide:
        return "skipped", "NIGHTSHIFT_IDE is off: sessions offer no VS Code", ""
    if settings.sandbox != "bwrap" or settings.broker_url:
        return (
            "failed",
            f"the IDE runs in sandboxes of this process; NIGHTSHIFT_SANDBOX={settings.sandbox}"
            + (" with NIGHTSHIFT_BROKER_URL set" if settings.broker_url else ""),
            "use NIGHTSHIFT_SANDBOX=bwrap in embedded mode (no NIGHTSHIFT_BROKER_URL)",
        )
    argv = shlex.split(settings.ide_command) or ["code-server"]
    found = shutil.which(argv[0], path=SANDBOX_PATH)
    if found is None or not os.path.realpath(found).startswith("/usr/"):
        return (
            "failed",
            f"{argv[0]} is not under /usr, where sandboxes look (NIGHTSHIFT_IDE_COMMAND)",
            "run `make ide` (code-server from npm into /usr/local/lib/nightshift-ide)",
        )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--version",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    number = re.search(r"\b\d+\.\d+[0-9.]*", out.decode(errors="replace"))
    version = number[0] if number else "(no version printed)"
    origin = ide_origin(settings)
    detail = f"{argv[0]} {version} at {found}; shown on {origin}"
    api_host = urlsplit(settings.base_url).hostname
    if proc.returncode != 0:
        return "failed", f"{argv[0]} --version exited {proc.returncode}", "run `make ide` again"
    if urlsplit(origin).hostname == api_host:
        return (
            "warning",
            f"{detail}, the API's host on another port: browsers share cookies between ports",
            "give the IDE host names of its own "
            "(NIGHTSHIFT_IDE_ORIGIN=https://{session}.ide.example.com)",
        )
    return "ok", detail, ""
