"""Nightshift workers on Modal, with their sandboxes on Modal too.

    modal secret create nightshift \\
        NIGHTSHIFT_BROKER_URL=rediss://:PASSWORD@redis.example.com:6380/0 \\
        NIGHTSHIFT_WORKER_TOKEN=... NIGHTSHIFT_CONTROL_URL=https://nightshift.example.com \\
        NIGHTSHIFT_PUBLIC_URL=https://nightshift.example.com \\
        NIGHTSHIFT_MODEL=anthropic:claude-sonnet-4-5 ANTHROPIC_API_KEY=... \\
        GITHUB_APP_ID=... GITHUB_APP_PRIVATE_KEY=...
    NIGHTSHIFT_WORKERS=4 modal deploy infra/modal/nightshift_modal.py

Each worker is an always-on Modal container running `nightshift worker`; its health port is
the container's web server, so Modal keeps `NIGHTSHIFT_WORKERS` of them up and replaces one
that dies (the API's reaper hands its sessions to the others). Sessions run in Modal
sandboxes (`NIGHTSHIFT_SANDBOX=modal`) created in the `NIGHTSHIFT_MODAL_APP` app.

The API stays on your host (infra/compose.yaml or infra/systemd): it is the single writer of
one SQLite file per session and needs a local disk that outlives it. So do Redis, PostgreSQL
and beat. Workers reach the API at NIGHTSHIFT_CONTROL_URL and Redis at NIGHTSHIFT_BROKER_URL,
so both must be reachable from Modal (TLS: `rediss://`, `https://`). Repositories are GitHub
repositories: a local-path repository exists only on the API's host.

This file only declares the deployment; everything it runs is the `nightshift` command.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import modal

ROOT = Path(__file__).resolve().parents[2]
WORKERS = int(os.environ.get("NIGHTSHIFT_WORKERS", "2"))
HEALTH_PORT = 8001

image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("git")
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .add_local_dir(
        ROOT,
        "/opt/nightshift",
        copy=True,
        ignore=[".venv", ".git", ".nightshift", "tests", "**/__pycache__"],
    )
    # The worker's own state (mirrors, built images): a directory of its own, not the shared /tmp.
    .run_commands("pip install --no-deps /opt/nightshift", "mkdir -p -m 700 /var/lib/nightshift")
    .env(
        {
            "NIGHTSHIFT_SANDBOX": "modal",
            "NIGHTSHIFT_MODAL_APP": "nightshift-sandboxes",
            "NIGHTSHIFT_DATA_DIR": "/var/lib/nightshift",
        }
    )
)

app = modal.App("nightshift-workers", image=image)


@app.function(
    secrets=[modal.Secret.from_name("nightshift")],
    min_containers=WORKERS,
    max_containers=WORKERS,
    cpu=2.0,
    memory=4096,
    timeout=24 * 3600,
)
@modal.web_server(HEALTH_PORT, startup_timeout=120)
def worker() -> None:
    subprocess.Popen(["nightshift", "worker", "--health-port", str(HEALTH_PORT)])
