"""The effective settings as an operator may see them: every value with secrets masked, and
where it came from.

A value is masked when its setting is a `SecretStr`, and scrubbed by the same `Redactor` that
keeps credentials out of events and logs (a password inside `NIGHTSHIFT_DATABASE_URL`, a token
pasted into a plain setting), so the output can be pasted into an issue as it is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, SecretStr

from app.settings import Settings
from app.settings_file import env_names, setting_origins
from workers.redact import PLACEHOLDER, Redactor


class SettingRow(BaseModel):
    """One setting: its file key, its environment variable, its shown value and its origin."""

    name: str
    env: str
    value: str | int | float | bool | None
    secret: bool
    source: str


def _shown(value: object, redactor: Redactor) -> tuple[str | int | float | bool | None, bool]:
    if isinstance(value, SecretStr):
        return (PLACEHOLDER if value.get_secret_value() else None), True
    if value is None or isinstance(value, bool | int | float):
        return value, False
    text = str(value) if isinstance(value, str | Path) else repr(value)
    scrubbed = redactor.text(text)
    return scrubbed, scrubbed != text


def effective_settings(settings: Settings) -> list[SettingRow]:
    """Every setting of `settings`, masked, with where its value came from."""
    redactor = Redactor(settings.secret_values())
    origins = setting_origins(type(settings))
    rows = []
    for name in type(settings).model_fields:
        value, secret = _shown(getattr(settings, name), redactor)
        env = env_names(type(settings), name)[0]
        rows.append(
            SettingRow(name=name, env=env, value=value, secret=secret, source=origins[name])
        )
    return rows
