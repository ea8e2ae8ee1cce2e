"""Every credential the settings hold is a `SecretStr` and is redacted wherever text leaves the
server: events, prompts, session titles and logs."""

from __future__ import annotations

import logging
import re
import types
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from app.schemas import RepoCreate
from app.settings import Settings
from tests.factories import make_person, make_repo
from tests.fakes.server import BackgroundServer

CREDENTIAL_NAME = re.compile(r"token|secret|key|password|credential", re.IGNORECASE)
NOT_CREDENTIALS = {
    "token_budget": "a number of model tokens",
    "model_context_tokens": "a model's context window, in tokens",
    "github_app_private_key_path": "a path; the key it names is read and redacted",
}


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return SecretStr in typing.get_args(annotation)
    return False


def _secret_fields() -> list[str]:
    return [n for n, f in Settings.model_fields.items() if _holds_secret(f.annotation)]


def test_every_setting_named_like_a_credential_is_a_secret() -> None:
    named = [n for n in Settings.model_fields if CREDENTIAL_NAME.search(n)]
    assert set(NOT_CREDENTIALS) <= set(named)  # the exceptions still exist, by these names
    plain = [n for n in named if n not in NOT_CREDENTIALS and n not in _secret_fields()]
    assert plain == [], f"make these SecretStr so they are redacted: {plain}"
    assert {"github_client_secret", "secret_keys", "modal_token_secret"} <= set(_secret_fields())


def _every_secret(tmp_path: Path) -> dict[str, str]:
    """A distinct, well-formed value for every SecretStr setting."""
    values = {name: f"{name}-value-{i:04d}-x" for i, name in enumerate(_secret_fields())}
    values["secret_keys"] = f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}"
    values["github_client_id"] = "Iv1.someclient"
    values["slack_app_token"] = "xapp-" + values["slack_app_token"]  # Socket Mode's shape
    return values


def test_secret_values_returns_every_configured_credential(
    make_settings: Any, tmp_path: Path
) -> None:
    values = _every_secret(tmp_path)
    settings = make_settings(**values)
    found = settings.secret_values()
    for name in _secret_fields():
        assert values[name] in found, name
    for key in values["secret_keys"].split(","):
        assert key in found  # each key alone, as it would be printed
    # The App key read from its file is a credential too.
    pem = "-----BEGIN RSA PRIVATE KEY-----\nopaque-key-material-1234\n-----END RSA PRIVATE KEY-----"
    (tmp_path / "app.pem").write_text(pem)
    from_file = make_settings(github_app_private_key_path=tmp_path / "app.pem")
    assert pem in from_file.secret_values()
    assert make_settings().secret_values() == []


def test_configured_secrets_never_come_back_from_the_api_or_the_logs(
    make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from app.main import create_app
    from app.runtime import build_runtime

    values = _every_secret(tmp_path)
    values.pop("worker_token")  # distributed mode's: needs a broker to start
    runtime = build_runtime(make_settings(**values))
    runtime.sessions.dispatcher = None  # the prompts stay queued: what is stored is read back
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    leaked = [values[n] for n in ("github_client_secret", "github_webhook_secret")]
    leaked += [values["modal_token_secret"], values["secret_keys"].split(",")[1]]
    try:
        with (
            BackgroundServer(create_app(runtime=runtime)) as server,
            httpx.Client(
                timeout=30, base_url=server.url, headers={"Authorization": f"Bearer {alice.token}"}
            ) as api,
        ):
            created = api.post(
                "/api/sessions", json={"repo": "proj", "prompt": f"print {leaked[0]} now"}
            )
            assert created.status_code == 201, created.text
            session_id = created.json()["id"]
            follow = api.post(
                f"/api/sessions/{session_id}/prompts",
                json={"text": "and " + " and ".join(leaked[1:])},
            )
            assert follow.status_code == 202
            answers = [
                api.get(f"/api/sessions/{session_id}/prompts").text,
                api.get(f"/api/sessions/{session_id}").text,
                api.get("/api/sessions").text,
                api.get(f"/api/sessions/{session_id}/events").text,
            ]
        prompts = runtime.sessions.prompts(session_id)
        assert [p.text for p in prompts] == [
            "print [redacted] now",
            "and [redacted] and [redacted] and [redacted]",
        ]
        with caplog.at_level(logging.INFO):
            logging.getLogger("nightshift.test").info("configured: %s", values)
        for text in [*answers, caplog.text]:
            for secret in (values[n] for n in _secret_fields() if n != "worker_token"):
                assert secret not in text
    finally:
        runtime.close()
