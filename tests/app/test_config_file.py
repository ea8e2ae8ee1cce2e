"""`nightshift.toml`: settings from a file, the environment winning over it, a bad file stopping
start-up with one line, and `nightshift config show` never printing a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings
from app.settings_file import SettingsFileError

SECRETS = {
    "slack_bot_token": "xoxb-111-222-config-file-bot-token",
    "slack_signing_secret": "plain-signing-secret-from-file",
    "openai_api_key": "unshaped-openai-key-value-42",
}


def _cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("nightshift")), *args],
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_come_from_the_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightshift.toml").write_text(
        'model = "openai:from-file"\nmax_steps = 7\ndata_dir = "file-data"\n'
        'slack_bot_token = "xoxb-from-file-000000"\nslack_signing_secret = "file-signing"\n'
    )
    settings = Settings()
    assert settings.model == "openai:from-file" and settings.max_steps == 7
    assert settings.data_dir == Path("file-data")
    assert settings.slack_enabled

    monkeypatch.setenv("NIGHTSHIFT_MAX_STEPS", "9")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-env-111111")
    settings = Settings()
    assert settings.max_steps == 9 and settings.model == "openai:from-file"
    assert settings.slack_bot_token is not None
    assert settings.slack_bot_token.get_secret_value() == "xoxb-from-env-111111"
    # A command's own option beats both.
    assert Settings(max_steps=3).max_steps == 3  # type: ignore[call-arg]


def test_nightshift_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightshift.toml").write_text("max_steps = 5\n")
    elsewhere = tmp_path / "etc" / "ns.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("max_steps = 11\n")
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(elsewhere))
    assert Settings().max_steps == 11

    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsFileError, match=r"missing\.toml: NIGHTSHIFT_CONFIG names a file"):
        Settings()


def test_an_unknown_setting_names_the_line_and_the_nearest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightshift.toml").write_text('model = "openai:x"\n\n# steps\nmax_stpes = 4\n')
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    assert (
        str(caught.value)
        == "nightshift.toml:4: unknown setting 'max_stpes'; did you mean 'max_steps'?"
    )

    # The environment-variable spelling is not a key; the hint names the key to write.
    (tmp_path / "nightshift.toml").write_text('NIGHTSHIFT_DATA_DIR = "d"\n')
    with pytest.raises(SettingsFileError, match="did you mean 'data_dir'"):
        Settings()

    (tmp_path / "nightshift.toml").write_text('[slack]\nbot_token = "x"\n')
    with pytest.raises(SettingsFileError, match=r"nightshift\.toml:1: unknown setting 'slack'"):
        Settings()


def test_a_value_of_the_wrong_kind_names_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightshift.toml").write_text('model = "openai:x"\nmax_steps = 0\n')
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    assert str(caught.value) == (
        "nightshift.toml:2: max_steps: Input should be greater than or equal to 1"
    )
    (tmp_path / "nightshift.toml").write_text('sandbox = "docker"\n')
    with pytest.raises(SettingsFileError, match=r"^nightshift\.toml:1: sandbox: Input should be"):
        Settings()
    # Values of the right kind load as they are written.
    (tmp_path / "nightshift.toml").write_text("max_steps = 12\nmodel_stream = false\n")
    settings = Settings()
    assert settings.max_steps == 12 and settings.model_stream is False


def test_a_file_that_does_not_parse_names_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightshift.toml").write_text('model = "openai:x"\nmax_steps = \n')
    with pytest.raises(SettingsFileError, match=r"^nightshift\.toml:2: not valid TOML: "):
        Settings()


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["repos", "list"]])
def test_a_bad_file_stops_every_command_with_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "nightshift.toml").write_text(
        'sandbox = "bwrap"\nbroker_ur = "redis://127.0.0.1:1/0"\n'
    )
    result = _cli(command, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: nightshift.toml:2: unknown setting 'broker_ur'; did you mean 'broker_url'?"
    ]
    assert not (tmp_path / ".nightshift").exists()  # nothing was started or created


def test_config_show_tells_where_each_value_came_from_and_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "nightshift.toml"
    config.parent.mkdir()
    config.write_text(
        'model = "openai:from-file"\nmax_steps = 7\n'
        + "".join(f'{k} = "{v}"\n' for k, v in SECRETS.items())
        + 'database_url = "postgresql+psycopg://ns:db-password-77@127.0.0.1/ns"\n'
        + 'broker_url = "redis://:redis-password-88@127.0.0.1:6379/0"\n'
        + 'worker_token = "file-worker-token-0123456789"\n'
    )
    (tmp_path / ".env").write_text("NIGHTSHIFT_PORT=8123\n")
    env = {
        "NIGHTSHIFT_CONFIG": str(config),
        "NIGHTSHIFT_MAX_STEPS": "9",
        "GITHUB_WEBHOOK_SECRET": "env-webhook-secret-value",
        "NIGHTSHIFT_WORKER_TOKEN": "env-worker-token-0123456789",
    }
    # The broker's password has no user before it: the form Redis URLs usually take.
    secrets = [*SECRETS.values(), "db-password-77", "redis-password-88", "file-worker-token"]
    secrets.append(env["GITHUB_WEBHOOK_SECRET"])
    secrets.append(env["NIGHTSHIFT_WORKER_TOKEN"])

    text = _cli(["config", "show"], tmp_path, env)
    assert text.returncode == 0, text.stderr
    rows = {line.split()[0]: line.split() for line in text.stdout.splitlines()}
    assert rows["model"][1:] == ["openai:from-file", str(config)]
    assert rows["max_steps"][1:] == ["9", "NIGHTSHIFT_MAX_STEPS"]
    assert rows["port"][1:] == ["8123", ".env", "(NIGHTSHIFT_PORT)"]
    assert rows["host"][1:] == ["127.0.0.1", "default"]
    assert rows["github_webhook_secret"][1:] == ["[redacted]", "GITHUB_WEBHOOK_SECRET"]
    assert rows["slack_bot_token"][1:] == ["[redacted]", str(config)]

    as_json = _cli(["config", "show", "--json"], tmp_path, env)
    assert as_json.returncode == 0, as_json.stderr
    data = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert data["openai_api_key"] == {
        "name": "openai_api_key",
        "env": "OPENAI_API_KEY",
        "value": "[redacted]",
        "secret": True,
        "source": str(config),
    }
    assert data["database_url"]["value"] == "postgresql+psycopg://[redacted]@127.0.0.1/ns"
    assert data["database_url"]["secret"] is True
    assert data["broker_url"]["value"] == "redis://[redacted]@127.0.0.1:6379/0"
    assert data["worker_token"]["source"] == "NIGHTSHIFT_WORKER_TOKEN"  # env over the file
    assert data["max_steps"]["value"] == 9 and data["max_steps"]["secret"] is False
    assert data["slack_api_url"]["source"] == "default"
    assert data["github_client_secret"]["value"] is None

    for output in (text.stdout + text.stderr, as_json.stdout + as_json.stderr):
        for secret in secrets:
            assert secret not in output
