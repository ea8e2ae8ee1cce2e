"""`nightshift doctor`'s checks: does this deployment have what it needs, talking to the real
services its settings name?

Each check answers one question with one `Check`: `ok`, `failed` (with the fix), `warning`
(works, but not as an operator would want) or `skipped` (does not apply to these settings, and
why). A check never raises: whatever goes wrong becomes its `failed` line, so one broken
service does not hide the state of the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from app.settings import Settings, reveal

Status = Literal["ok", "failed", "warning", "skipped"]
TIMEOUT_S = 20.0
DEFAULT_MIN_FREE_GB = 5.0


@dataclass(frozen=True)
class Check:
    """The answer of one check; `fix` says what to change when it is not `ok`."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, "failed", detail, fix)


def _skipped(name: str, why: str) -> Check:
    return Check(name, "skipped", why)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def check_sandbox(settings: Settings) -> Check:
    """The configured backend starts a sandbox and runs a command in it."""
    from images.sandboxes import make_backend
    from images.sandboxes.base import ImageRef, SandboxSpec
    from images.sandboxes.overlay import chown_tree

    name = "sandbox"
    fix = "`nightshift sandbox info` shows how each limit is enforced; see README, Sandboxes"
    data_dir = settings.data_dir.resolve()
    scratch = data_dir / "scratch" / f"doctor-{secrets.token_hex(4)}"
    try:
        backend = make_backend(settings.sandbox, data_dir, settings.sandbox_config())
        for sub in ("workspace", "home"):
            (scratch / "root" / sub).mkdir(parents=True)
        chown_tree(scratch / "root", backend.owner)
        image = ImageRef(
            id=scratch.name,
            repo="",
            sha="",
            backend=backend.name,
            location=str(scratch),
            runtime=backend.runtime_version(),
            built_at=time.time(),
        )
        started = time.monotonic()
        sandbox = await backend.start(SandboxSpec(image, settings.limits(), label="doctor"))
        try:
            result = await sandbox.exec(["echo", "nightshift-doctor"], timeout=TIMEOUT_S)
        finally:
            await sandbox.terminate()
    except Exception as exc:
        return _failed(name, f"{settings.sandbox}: {_error(exc)}", fix)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.exit_code != 0 or "nightshift-doctor" not in result.stdout:
        why = (result.stderr or result.stdout).strip()[:200]
        return _failed(name, f"{settings.sandbox}: `echo` exited {result.exit_code}: {why}", fix)
    ms = int((time.monotonic() - started) * 1000)
    return _ok(name, f"{settings.sandbox} ({backend.runtime_version()}) ran a command in {ms} ms")


async def check_model(settings: Settings) -> Check:
    """The configured model answers a tiny request."""
    from integrations.llm import make_model
    from integrations.llm.types import ChatMessage, Completion

    name = "model"
    fix = "check NIGHTSHIFT_MODEL and the provider's key and base URL (OPENAI_*, ANTHROPIC_*)"
    config = dataclasses.replace(settings.agent_config().model, timeout=TIMEOUT_S, stream=False)
    try:
        client = make_model(config)
    except Exception as exc:
        return _failed(name, str(exc), fix)
    try:
        messages = [ChatMessage(role="user", text="Reply with the single word: ok")]
        completion = None
        async for item in client.stream("Answer in one word.", messages, []):
            if isinstance(item, Completion):
                completion = item
    except Exception as exc:
        return _failed(name, f"{config.model}: {_error(exc)}", fix)
    finally:
        await client.aclose()
    if completion is None:
        return _failed(name, f"{config.model}: the answer ended without a completion", fix)
    said = completion.message.text.strip().replace("\n", " ")[:40]
    return _ok(name, f"{config.model} answered {said!r}")


async def check_github_app(settings: Settings) -> Check:
    """The App's key signs a JWT GitHub accepts, and the App is installed somewhere."""
    name = "github app"
    if not settings.github_enabled:
        return _skipped(name, "GITHUB_APP_ID is not set: repositories use the local forge")
    from integrations.github.app import GitHubApp
    from integrations.github.client import GitHubConfig, call

    fix = (
        "check GITHUB_APP_ID, the private key (GITHUB_APP_PRIVATE_KEY[_PATH]) and "
        "GITHUB_API_URL against the App's page on GitHub"
    )
    try:
        app = GitHubApp(
            GitHubConfig(api_url=settings.github_api_url.rstrip("/")),
            settings.github_app_id or "",
            settings.github_private_key(),
        )
        client = app.as_app()
        installations = await asyncio.to_thread(
            call, "list the App's installations", lambda: client.rest.apps.list_installations()
        )
    except Exception as exc:
        return _failed(name, _error(exc), fix)
    accounts = [i.get("account", {}).get("login", "?") for i in installations or []]
    if not accounts:
        return Check(
            name,
            "warning",
            f"App {settings.github_app_id} signs in but is installed nowhere",
            "install the App on the repositories Nightshift should work on",
        )
    return _ok(name, f"App {settings.github_app_id} is installed on {', '.join(accounts)}")


async def check_github_webhooks(settings: Settings) -> Check:
    name = "github webhooks"
    if not settings.github_enabled:
        return _skipped(name, "GITHUB_APP_ID is not set: no webhooks are expected")
    if settings.github_webhook_secret is None or not reveal(settings.github_webhook_secret):
        return _failed(
            name,
            "GITHUB_WEBHOOK_SECRET is not set: every delivery is refused",
            "set GITHUB_WEBHOOK_SECRET to the App's webhook secret",
        )
    return _ok(name, "GITHUB_WEBHOOK_SECRET is set")


async def check_github_sign_in(settings: Settings) -> Check:
    name = "github sign-in"
    wanted = settings.allowed_orgs or settings.allowed_users
    if settings.github_oauth_enabled:
        return _ok(name, f"OAuth client {settings.github_client_id} is set")
    if wanted:
        return _failed(
            name,
            "NIGHTSHIFT_GITHUB_ALLOWED_ORGS/USERS are set but no OAuth client: nobody can sign in",
            "set GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET (the App's client id and secret)",
        )
    if settings.github_enabled and settings.pr_fallback == "none":
        return _failed(
            name,
            "no OAuth client: pull requests cannot be opened as the people who asked",
            "set GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET, or NIGHTSHIFT_PR_FALLBACK=app",
        )
    return _skipped(name, "GitHub sign-in is off (no GITHUB_CLIENT_ID)")


async def check_slack(settings: Settings) -> Check:
    """The bot token is accepted by Slack's `auth.test`."""
    name = "slack"
    if not settings.slack_enabled:
        return _skipped(name, "SLACK_BOT_TOKEN is not set: the Slack bot is off")
    from integrations.slack.client import SlackApiError, error_code, web_client

    fix = "check SLACK_BOT_TOKEN (Slack app: OAuth & Permissions) and SLACK_API_URL"
    client = web_client(
        reveal(settings.slack_bot_token) or "", settings.slack_api_url, retries=0, timeout=20
    )
    try:
        answer = await client.auth_test()
    except SlackApiError as exc:
        return _failed(name, f"auth.test: {error_code(exc)}", fix)
    except Exception as exc:
        return _failed(name, f"auth.test: {_error(exc)}", fix)
    return _ok(name, f"bot @{answer.get('user')} in {answer.get('team') or answer.get('team_id')}")


async def check_slack_socket_mode(settings: Settings) -> Check:
    """The app-level token may open a Socket Mode connection (`apps.connections.open`)."""
    name = "slack socket mode"
    app_token = reveal(settings.slack_app_token)
    if not app_token or not settings.slack_enabled:
        return _skipped(name, "SLACK_APP_TOKEN is not set: Slack delivers over HTTP")
    from integrations.slack.client import SlackApiError, error_code, web_client

    fix = (
        "check SLACK_APP_TOKEN (Slack app: Basic Information, App-Level Tokens, scope "
        "connections:write) and that Socket Mode is on"
    )
    client = web_client(app_token, settings.slack_api_url, retries=0, timeout=20)
    try:
        # A URL is issued but not connected to; it expires unused.
        await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        return _failed(name, f"apps.connections.open: {error_code(exc)}", fix)
    except Exception as exc:
        return _failed(name, f"apps.connections.open: {_error(exc)}", fix)
    return _ok(name, "the app-level token may open a Socket Mode connection")


async def check_public_url(settings: Settings) -> Check:
    """`NIGHTSHIFT_PUBLIC_URL` reaches a Nightshift server from this host."""
    name = "public url"
    needed = settings.slack_enabled or settings.github_enabled or settings.github_oauth_enabled
    if not settings.public_url:
        if needed:
            return _failed(
                name,
                "NIGHTSHIFT_PUBLIC_URL is not set: links in Slack and pull requests point at "
                f"{settings.base_url}",
                "set NIGHTSHIFT_PUBLIC_URL to where people reach the web viewer",
            )
        return _skipped(name, f"NIGHTSHIFT_PUBLIC_URL is not set: links use {settings.base_url}")
    url = f"{settings.base_url}/healthz"
    fix = "start `nightshift serve`, and check DNS, TLS and the proxy in front of it"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as client:
            response = await client.get(url)
        body = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        return _failed(name, f"GET {url}: {_error(exc)}", fix)
    if response.status_code != 200 or body.get("status") != "ok" or "version" not in body:
        return _failed(
            name, f"GET {url}: {response.status_code}, not a Nightshift server's answer", fix
        )
    return _ok(name, f"{url} answers (Nightshift {body['version']}, {body.get('mode')})")


async def check_redis(settings: Settings) -> Check:
    name = "redis"
    if not settings.broker_url:
        return _skipped(name, "embedded mode (no NIGHTSHIFT_BROKER_URL)")
    import redis

    def ping() -> str:
        client = redis.Redis.from_url(settings.broker_url or "", socket_connect_timeout=5)
        try:
            client.ping()
            return str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()

    try:
        version = await asyncio.to_thread(ping)
    except Exception as exc:
        return _failed(
            name,
            f"{_redact(settings.broker_url)}: {_error(exc)}",
            "start Redis, or fix NIGHTSHIFT_BROKER_URL",
        )
    return _ok(name, f"{_redact(settings.broker_url)} answers (Redis {version})")


async def check_database(settings: Settings) -> Check:
    name = "database"
    if not settings.database_url:
        if settings.broker_url:
            return _failed(
                name,
                "distributed mode on SQLite: workers cannot share the image registry",
                "set NIGHTSHIFT_DATABASE_URL=postgresql+psycopg://user@host/db",
            )
        return _skipped(name, "embedded mode: the control DB is SQLite in the data dir")
    from sqlalchemy import create_engine, text

    def select_one() -> str:
        engine = create_engine(settings.control_db_url, connect_args=_connect_timeout(settings))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return engine.dialect.name
        finally:
            engine.dispose()

    try:
        dialect = await asyncio.to_thread(select_one)
    except Exception as exc:
        return _failed(
            name,
            f"{_redact(settings.database_url)}: {_error(exc)}",
            "start the database, or fix NIGHTSHIFT_DATABASE_URL",
        )
    return _ok(name, f"{_redact(settings.database_url)} answers ({dialect})")


def _connect_timeout(settings: Settings) -> dict[str, object]:
    return {"connect_timeout": 5} if settings.control_db_url.startswith("postgresql") else {}


def _redact(url: str) -> str:
    from workers.redact import Redactor

    return Redactor().text(url)


async def check_disk(settings: Settings, min_free_gb: float = DEFAULT_MIN_FREE_GB) -> Check:
    """Free space where the data dir is (or would be created)."""
    name = "disk"
    path = settings.data_dir.resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    free_gb = shutil.disk_usage(existing).free / 1024**3
    detail = f"{free_gb:.1f} GB free at {existing}"
    if free_gb < min_free_gb:
        return _failed(
            name,
            f"{detail}, below {min_free_gb:g} GB",
            "free space, or move NIGHTSHIFT_DATA_DIR to a bigger disk (images and snapshots "
            "live there)",
        )
    return _ok(name, detail)


async def check_ide(settings: Settings) -> Check:
    """VS Code in the browser: code-server where sandboxes find it, and where it is shown."""
    from app.doctor_ide import ide_readiness

    try:
        status, detail, fix = await ide_readiness(settings)
    except Exception as exc:
        return _failed("ide", _error(exc), "run `make ide`")
    return Check("ide", status, detail, fix)


CheckFn = Callable[[Settings], Awaitable[Check]]
CHECKS: dict[str, CheckFn] = {
    "sandbox": check_sandbox,
    "model": check_model,
    "github app": check_github_app,
    "github webhooks": check_github_webhooks,
    "github sign-in": check_github_sign_in,
    "slack": check_slack,
    "slack socket mode": check_slack_socket_mode,
    "public url": check_public_url,
    "redis": check_redis,
    "database": check_database,
    "ide": check_ide,
}


async def run_checks(settings: Settings, min_free_gb: float = DEFAULT_MIN_FREE_GB) -> list[Check]:
    """Every check, at once, in the order of `CHECKS` and then the disk."""
    from workers.redact import Redactor

    results = await asyncio.gather(*(check(settings) for check in CHECKS.values()))
    # An error a service answers with may quote a credential (a URL, a key): never print one.
    redactor = Redactor(settings.secret_values())
    checks = [*results, await check_disk(settings, min_free_gb)]
    return [dataclasses.replace(c, detail=redactor.text(c.detail)) for c in checks]
