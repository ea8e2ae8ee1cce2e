"""`nightshift doctor`: every check against the real thing or a fake of the outside service,
once healthy and once broken, and the command's lines and exit code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app import doctor
from tests.fakes.github import FakeGitHub, github_settings
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET

CLOSED = "127.0.0.1:1"
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed"
)


def _run(check: Any, settings: Any) -> doctor.Check:
    result: doctor.Check = asyncio.run(check(settings))
    return result


def _other_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# ---------------------------------------------------------------- sandbox


@needs_bwrap
def test_sandbox_runs_a_command(make_settings: Any) -> None:
    settings = make_settings(sandbox="bwrap")
    check = _run(doctor.check_sandbox, settings)
    assert check.status == "ok", check
    assert check.detail.startswith("bwrap (") and "ran a command" in check.detail
    assert not list((settings.data_dir / "scratch").iterdir())  # the probe left nothing


def test_the_ide_line_says_what_the_ide_needs(make_settings: Any) -> None:
    off = _run(doctor.check_ide, make_settings(ide=False))
    assert off.status == "skipped" and "NIGHTSHIFT_IDE is off" in off.detail
    elsewhere = _run(doctor.check_ide, make_settings(ide=True, sandbox="gvisor"))
    assert elsewhere.status == "failed" and "NIGHTSHIFT_SANDBOX=bwrap" in elsewhere.fix
    missing = _run(
        doctor.check_ide, make_settings(ide=True, sandbox="bwrap", ide_command="no-such-ide")
    )
    assert missing.status == "failed" and "make ide" in missing.fix
    assert "no-such-ide is not under /usr" in missing.detail
    # git stands in for code-server: a program under /usr that answers `--version`.
    version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[2]
    shared = make_settings(ide=True, sandbox="bwrap", ide_command="/usr/bin/git")
    check = _run(doctor.check_ide, shared)
    assert check.status == "warning", check
    assert check.detail.startswith(f"/usr/bin/git {version} at /usr/bin/git;")
    assert "shown on http://127.0.0.1:8001" in check.detail and "cookies" in check.detail
    assert "NIGHTSHIFT_IDE_ORIGIN" in check.fix
    own = make_settings(
        ide=True, sandbox="bwrap", ide_command="/usr/bin/git", ide_origin="https://ide.example"
    )
    assert _run(doctor.check_ide, own).status == "ok"


def test_a_sandbox_that_runs_nothing_fails(make_settings: Any) -> None:
    check = _run(doctor.check_sandbox, make_settings(sandbox="fake"))
    assert check.status == "failed"
    assert "fake: `echo` exited 127" in check.detail and "nightshift sandbox info" in check.fix


# ---------------------------------------------------------------- model


def test_the_model_answers(make_settings: Any, openai_fake: ScriptBook) -> None:
    openai_fake.script("single word", Turn(text="ok"))
    settings = make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
    )
    check = _run(doctor.check_model, settings)
    assert check == doctor.Check("model", "ok", "openai:fake-model answered 'ok'")
    assert len(openai_fake.requests) == 1


def test_a_model_that_refuses_or_is_missing_fails(
    make_settings: Any, openai_fake: ScriptBook
) -> None:
    openai_fake.fail_next(401)
    settings = make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
    )
    check = _run(doctor.check_model, settings)
    assert check.status == "failed" and check.detail.startswith("openai:fake-model: ")
    assert "NIGHTSHIFT_MODEL" in check.fix

    missing = _run(doctor.check_model, make_settings(model=None))
    assert missing.status == "failed" and "no model is configured" in missing.detail


# ---------------------------------------------------------------- GitHub


def test_the_github_app_signs_and_lists_installations(
    make_settings: Any, github_fake: FakeGitHub
) -> None:
    github_fake.add_installation(7, "acme")
    check = _run(doctor.check_github_app, make_settings(**github_settings(github_fake)))
    assert check == doctor.Check("github app", "ok", "App 4242 is installed on acme")


def test_a_github_app_key_github_refuses_fails(make_settings: Any, github_fake: FakeGitHub) -> None:
    settings = make_settings(**github_settings(github_fake, github_app_private_key=_other_key()))
    check = _run(doctor.check_github_app, settings)
    assert check.status == "failed" and "JSON web token" in check.detail
    assert "GITHUB_APP_ID" in check.fix

    installed_nowhere = _run(doctor.check_github_app, make_settings(**github_settings(github_fake)))
    assert installed_nowhere.status == "warning" and "installed nowhere" in installed_nowhere.detail

    skipped = _run(doctor.check_github_app, make_settings())
    assert skipped.status == "skipped" and "GITHUB_APP_ID is not set" in skipped.detail


def test_the_webhook_secret_is_set_or_the_check_fails(
    make_settings: Any, github_fake: FakeGitHub
) -> None:
    ok = _run(doctor.check_github_webhooks, make_settings(**github_settings(github_fake)))
    assert ok.status == "ok"
    values = github_settings(github_fake)
    del values["github_webhook_secret"]
    broken = _run(doctor.check_github_webhooks, make_settings(**values))
    assert broken.status == "failed" and "GITHUB_WEBHOOK_SECRET" in broken.fix
    assert _run(doctor.check_github_webhooks, make_settings()).status == "skipped"


def test_github_sign_in_needs_an_oauth_client(make_settings: Any, github_fake: FakeGitHub) -> None:
    ok = _run(doctor.check_github_sign_in, make_settings(**github_settings(github_fake)))
    assert ok == doctor.Check(
        "github sign-in", "ok", f"OAuth client {github_fake.client_id} is set"
    )

    allowlist = _run(doctor.check_github_sign_in, make_settings(github_allowed_users="octocat"))
    assert allowlist.status == "failed" and "nobody can sign in" in allowlist.detail

    values = github_settings(github_fake)
    del values["github_client_id"], values["github_client_secret"]
    app_only = _run(doctor.check_github_sign_in, make_settings(**values))
    assert app_only.status == "failed" and "NIGHTSHIFT_PR_FALLBACK=app" in app_only.fix
    fallback = _run(doctor.check_github_sign_in, make_settings(**values, pr_fallback="app"))
    assert fallback.status == "skipped"


# ---------------------------------------------------------------- Slack


def test_slack_accepts_the_bot_token(make_settings: Any, slack_fake: Any) -> None:
    settings = make_settings(
        slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_api_url=slack_fake.url
    )
    check = _run(doctor.check_slack, settings)
    assert check == doctor.Check("slack", "ok", "bot @nightshift in Acme")
    assert [c.method for c in slack_fake.of("auth.test")] == ["auth.test"]


def test_a_bot_token_slack_refuses_fails(make_settings: Any, slack_fake: Any) -> None:
    settings = make_settings(
        slack_bot_token="xoxb-revoked-0000000000",
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack_fake.url,
    )
    check = _run(doctor.check_slack, settings)
    assert check.status == "failed" and check.detail == "auth.test: invalid_auth"
    assert "SLACK_BOT_TOKEN" in check.fix
    skipped = _run(doctor.check_slack, make_settings())
    assert skipped.status == "skipped" and "SLACK_BOT_TOKEN is not set" in skipped.detail


def test_the_app_level_token_may_open_a_socket(make_settings: Any, slack_fake: Any) -> None:
    settings = make_settings(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack_fake.url
    )
    check = _run(doctor.check_slack_socket_mode, settings)
    assert check.status == "ok", check
    assert len(slack_fake.of("apps.connections.open")) == 1


def test_an_app_level_token_slack_refuses_fails(make_settings: Any, slack_fake: Any) -> None:
    settings = make_settings(
        slack_bot_token=BOT_TOKEN,
        slack_app_token="xapp-1-A0-1-revokedtoken",
        slack_api_url=slack_fake.url,
    )
    check = _run(doctor.check_slack_socket_mode, settings)
    assert check == doctor.Check(
        "slack socket mode", "failed", "apps.connections.open: invalid_auth", check.fix
    )
    assert "connections:write" in check.fix
    http_only = make_settings(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
    skipped = _run(doctor.check_slack_socket_mode, http_only)
    assert skipped.status == "skipped" and "over HTTP" in skipped.detail


# ---------------------------------------------------------------- public URL


def test_the_public_url_reaches_this_server(make_settings: Any, server: BackgroundServer) -> None:
    check = _run(doctor.check_public_url, make_settings(public_url=server.url))
    assert check.status == "ok" and check.detail.startswith(f"{server.url}/healthz answers")


def test_a_public_url_that_reaches_nothing_or_something_else_fails(
    make_settings: Any, slack_fake: Any
) -> None:
    closed = _run(doctor.check_public_url, make_settings(public_url=f"http://{CLOSED}"))
    assert closed.status == "failed" and closed.detail.startswith(f"GET http://{CLOSED}/healthz: ")
    other = slack_fake.url.removesuffix("/api/")
    elsewhere = _run(doctor.check_public_url, make_settings(public_url=other))
    assert elsewhere.status == "failed" and "not a Nightshift server" in elsewhere.detail
    unset = _run(
        doctor.check_public_url,
        make_settings(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET),
    )
    assert unset.status == "failed" and "NIGHTSHIFT_PUBLIC_URL" in unset.fix
    assert _run(doctor.check_public_url, make_settings()).status == "skipped"


# ---------------------------------------------------------------- Redis and PostgreSQL


def test_redis_answers_in_distributed_mode(make_settings: Any, redis_url: str) -> None:
    check = _run(doctor.check_redis, make_settings(broker_url=redis_url))
    assert check.status == "ok" and "(Redis " in check.detail


def test_a_broker_that_does_not_answer_fails(make_settings: Any) -> None:
    check = _run(doctor.check_redis, make_settings(broker_url=f"redis://{CLOSED}/0"))
    assert check.status == "failed" and "NIGHTSHIFT_BROKER_URL" in check.fix
    assert _run(doctor.check_redis, make_settings()).status == "skipped"


def test_postgres_answers(make_settings: Any, postgres_url: str) -> None:
    check = _run(doctor.check_database, make_settings(database_url=postgres_url))
    assert check.status == "ok" and check.detail.endswith("answers (postgresql)")


def test_a_database_that_does_not_answer_fails(make_settings: Any) -> None:
    url = f"postgresql+psycopg://ns:db-secret-pw@{CLOSED}/ns"
    check = _run(doctor.check_database, make_settings(database_url=url))
    assert check.status == "failed" and "db-secret-pw" not in check.detail
    assert "NIGHTSHIFT_DATABASE_URL" in check.fix
    sqlite = _run(doctor.check_database, make_settings(broker_url="redis://127.0.0.1:6379/0"))
    assert sqlite.status == "failed" and "postgresql" in sqlite.fix
    assert _run(doctor.check_database, make_settings()).status == "skipped"


# ---------------------------------------------------------------- disk


def test_free_disk_space_in_the_data_dir(make_settings: Any) -> None:
    settings = make_settings()
    ok = asyncio.run(doctor.check_disk(settings, min_free_gb=0.001))
    assert ok.status == "ok" and "GB free at" in ok.detail
    full = asyncio.run(doctor.check_disk(settings, min_free_gb=10**9))
    assert full.status == "failed" and "below 1e+09 GB" in full.detail
    assert "NIGHTSHIFT_DATA_DIR" in full.fix


# ---------------------------------------------------------------- the command


@needs_bwrap
def test_doctor_prints_one_line_per_check_and_fails_on_a_failed_one(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
        "NIGHTSHIFT_MODEL": "scripted:echo",
        "COLUMNS": "200",
    }
    nightshift = str(Path(sys.executable).with_name("nightshift"))
    healthy = subprocess.run(
        [nightshift, "doctor", "--min-free-gb", "0.001"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "ok", "ok", "skipped", "skipped", "skipped", "skipped", "skipped", "skipped", "skipped",
        "skipped", "skipped", "ok",
    ]  # fmt: skip
    assert lines[10].split(None, 2)[1:] == [
        "ide",
        "NIGHTSHIFT_IDE is off: sessions offer no VS Code",
    ]
    assert lines[5].split(None, 2)[1:] == [
        "slack",
        "SLACK_BOT_TOKEN is not set: the Slack bot is off",
    ]

    broken = subprocess.run(
        [nightshift, "doctor", "--min-free-gb", "1000000000"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[-1].startswith("FAILED   disk")
    assert "— fix: free space" in broken.stdout

    as_json = subprocess.run(
        [nightshift, "doctor", "--json", "--min-free-gb", "1000000000"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert as_json.returncode == 1
    checks = json.loads(as_json.stdout)
    assert [c["name"] for c in checks] == [*doctor.CHECKS, "disk"]
    assert checks[-1]["status"] == "failed" and checks[-1]["fix"].startswith("free space")
    assert checks[1] == {
        "name": "model",
        "status": "ok",
        "detail": checks[1]["detail"],
        "fix": "",
    } and checks[1]["detail"].startswith("scripted:echo answered")


def test_every_check_answers_and_no_detail_carries_a_credential(make_settings: Any) -> None:
    settings = make_settings(
        sandbox="fake",
        model=None,
        public_url=f"http://ops:url-secret-pw@{CLOSED}",
        database_url=f"postgresql+psycopg://ns:db-secret-pw@{CLOSED}/ns",
        broker_url=f"redis://:redis-secret-pw@{CLOSED}/0",
        worker_token="worker-token-0123456789abcdef",
    )
    checks = asyncio.run(doctor.run_checks(settings, min_free_gb=0.001))
    assert [c.name for c in checks] == [*doctor.CHECKS, "disk"]
    by_name = {c.name: c for c in checks}
    assert by_name["public url"].status == "failed"
    assert by_name["public url"].detail.startswith("GET http://[redacted]@127.0.0.1:1/healthz")
    assert by_name["redis"].status == by_name["database"].status == "failed"
    text = repr(checks)
    for secret in ("url-secret-pw", "db-secret-pw", "redis-secret-pw", "worker-token-0123"):
        assert secret not in text
