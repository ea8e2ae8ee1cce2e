"""`nightshift github ...`: keys for token encryption, key rotation, a manual reconcile."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from app.commands.common import err, fail, load_settings, runtime_from
from app.services.crypto import Undecryptable, new_key

app = typer.Typer(help="GitHub: token encryption keys, key rotation, reconciling PR states.")


@app.command("secret-key")
def secret_key() -> None:
    """Print a new key for NIGHTSHIFT_SECRET_KEYS (a Fernet key)."""
    print(new_key())


@app.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored GitHub token under the first key of NIGHTSHIFT_SECRET_KEYS.

    Rotation: put a new key first (keep the old ones after it), restart, run this, then
    remove the old keys.
    """
    settings = load_settings()
    if not settings.secret_keys:
        fail("NIGHTSHIFT_SECRET_KEYS is not set; there is nothing to rotate")
    with runtime_from(settings) as runtime:
        if runtime.accounts is None:
            fail("GitHub sign-in is not configured (GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET)")
        try:
            count = runtime.accounts.rotate_keys()
        except Undecryptable as exc:
            fail(str(exc))
    err.print(f"re-encrypted the GitHub tokens of {count} account(s) under the first key")


@app.command("reconcile")
def reconcile() -> None:
    """Process webhook deliveries left queued and refresh the state of every open PR (the
    server does this every 10 minutes); prints JSON counts."""
    from app.services.github.app import reconcile_github

    settings = load_settings()
    if not settings.github_enabled:
        fail("the GitHub App is not configured (GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY_PATH)")
    with runtime_from(settings) as runtime:
        result = reconcile_github(
            runtime.github, runtime.pull_requests, runtime.engine, runtime.hub, runtime.sessions
        )
    print(json.dumps(asdict(result)))
