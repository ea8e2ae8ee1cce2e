"""The deployment's settings file, `nightshift.toml`, and where each setting came from.

Settings come from, strongest first: a command's own options, the environment, `.env`, then the
file (`nightshift.toml` in the working directory, or the path in `NIGHTSHIFT_CONFIG`), then the
defaults. Reading the file goes through pydantic-settings' own `TomlConfigSettingsSource`; this
module adds what it lacks: a file that does not parse, names an unknown setting or gives one a
value of the wrong type stops start-up with one line naming the file, the line and the nearest
valid name, because a typo that is silently ignored leaves a deployment running on a default
nobody chose.

Keys are the settings' lower-case names: the environment variable without the `NIGHTSHIFT_`
prefix (`data_dir`, `model`), or the provider's own name (`slack_bot_token`, `openai_api_key`).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, TomlConfigSettingsSource

from app.errors import AppError

CONFIG_ENV = "NIGHTSHIFT_CONFIG"
DEFAULT_FILE = "nightshift.toml"
_TOML_AT_RE = re.compile(r"\(at line (\d+), column \d+\)")


class SettingsFileError(AppError, ValueError):
    """A settings file that cannot be used: `path:line: reason`, one line."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


def config_path() -> Path | None:
    """The settings file in use: `NIGHTSHIFT_CONFIG`'s path (which must exist), else
    `nightshift.toml` in the working directory when there is one, else None."""
    named = os.environ.get(CONFIG_ENV, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise SettingsFileError(path, f"{CONFIG_ENV} names a file that does not exist")
        return path
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def setting_names(settings_cls: type[BaseSettings]) -> list[str]:
    """The keys a settings file may use: the fields' names (and any other lower-case name a
    field is read under), in declaration order."""
    names: dict[str, None] = {}
    for name, field in settings_cls.model_fields.items():
        names[name] = None
        if isinstance(field.validation_alias, AliasChoices):
            names.update(
                (c.lower(), None) for c in field.validation_alias.choices if isinstance(c, str)
            )
    return list(names)


def _key_line(lines: list[str], key: str) -> int | None:
    pattern = re.compile(rf"^\s*(?:\[\s*)?[\"']?{re.escape(key)}[\"']?\s*(?:=|\.|\])", re.I)
    for number, text in enumerate(lines, 1):
        if pattern.match(text):
            return number
    return None


def check_file(settings_cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The parsed file; a SettingsFileError for bad TOML or a key that names no setting."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(path, f"cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT_RE.search(message)
        reason = _TOML_AT_RE.sub("", message).replace("(at end of document)", "").strip()
        at_line = int(at.group(1)) if at else max(len(text.splitlines()), 1)
        raise SettingsFileError(path, f"not valid TOML: {reason}", at_line) from None
    names = setting_names(settings_cls)
    for key, value in data.items():
        line = _key_line(text.splitlines(), key)
        if key.lower() not in names:
            guess = key.lower().removeprefix("nightshift_")
            close = difflib.get_close_matches(guess, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else " (see `nightshift config show`)"
            raise SettingsFileError(path, f"unknown setting {key!r}{hint}", line)
        problem = _value_problem(settings_cls, key.lower(), value)
        if problem:
            raise SettingsFileError(path, f"{key}: {problem}", line)
    return data


def _value_problem(settings_cls: type[BaseSettings], key: str, value: Any) -> str | None:
    """Why `value` cannot be this setting's (type and bounds; checks across settings run when
    the settings are built), or None."""
    field = settings_cls.model_fields.get(key)
    if field is None:  # a key read under another name of its field: pydantic will check it
        return None
    kind: Any = field.annotation
    if field.metadata:
        kind = Annotated[(kind, *field.metadata)]
    try:
        TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"])
    return None


class SettingsFileSource(TomlConfigSettingsSource):
    """`TomlConfigSettingsSource` over the checked settings file (none: an empty source)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        path = config_path()
        self.path = path
        if path is not None:
            check_file(settings_cls, path)
        super().__init__(settings_cls, toml_file=path)


def env_names(settings_cls: type[BaseSettings], name: str) -> list[str]:
    """The environment variables a setting is read from (`NIGHTSHIFT_DATA_DIR`, `GITHUB_APP_ID`)."""
    alias = settings_cls.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return list(dict.fromkeys(c.upper() for c in alias.choices if isinstance(c, str)))
    if isinstance(alias, str):
        return [alias.upper()]
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper()]


def _dotenv(settings_cls: type[BaseSettings]) -> dict[str, str]:
    from dotenv import dotenv_values

    env_file = settings_cls.model_config.get("env_file")
    if not isinstance(env_file, str | Path) or not Path(env_file).is_file():
        return {}
    return {k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None}


def setting_origins(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Where each setting's value comes from: an environment variable's name, `.env (NAME)`,
    the settings file's path, or `default` (the same order of strength settings are read in)."""
    environ = {k.upper(): k for k in os.environ}
    dotenv = _dotenv(settings_cls)
    path = config_path()
    in_file = {k.lower() for k in check_file(settings_cls, path)} if path else set()
    origins: dict[str, str] = {}
    for name in settings_cls.model_fields:
        candidates = env_names(settings_cls, name)
        from_env = next((environ[c] for c in candidates if c in environ), None)
        from_dotenv = next((c for c in candidates if c in dotenv), None)
        if from_env:
            origins[name] = from_env
        elif from_dotenv:
            origins[name] = f".env ({from_dotenv})"
        elif name in in_file and path is not None:
            origins[name] = str(path)
        else:
            origins[name] = "default"
    return origins
