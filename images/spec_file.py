"""Reading a repository's `.nightshift.toml`: `parse_spec_file` checks every key and names the
line of anything wrong (`SpecFileError`); `read_spec_file` opens it in a fresh clone, refusing
symlinks and anything but a small regular UTF-8 file. The shapes are in `images/spec.py`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from images.pages import PAGE_KEYS, parse_pages
from images.spec import (
    SPEC_CI_FIX_MAX,
    SPEC_FILE,
    SPEC_FILE_KEYS,
    SPEC_FILE_MAX_BYTES,
    SpecFile,
    SpecFileError,
    check_env,
    check_hosts,
    check_image,
    check_repo_path,
)

_TOML_AT_RE = re.compile(r"\(at line (\d+), column \d+\)$")
_HEADER_RE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def _key_line(lines: list[str], key: str, table: str | None = None) -> int | None:
    """The 1-based line where `key` is assigned (inside `[table]` when given)."""
    pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
    in_table = table is None
    for number, line in enumerate(lines, 1):
        header = _HEADER_RE.match(line)
        if header:
            in_table = table is not None and header.group(1).strip() == table
            continue
        if in_table and pattern.match(line):
            return number
    return None


def _table_line(lines: list[str], table: str) -> int | None:
    """The 1-based line of the `[table]` header."""
    for number, line in enumerate(lines, 1):
        header = _HEADER_RE.match(line)
        if header and header.group(1).strip() == table:
            return number
    return None


def _commands(value: Any, key: str, line: int | None) -> list[str]:
    if not isinstance(value, list):
        raise SpecFileError(
            f"{key} must be a list of command strings, got {type(value).__name__}", line
        )
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise SpecFileError(f"{key}[{index}] must be a non-empty command string", line)
        out.append(item)
    if len(out) > 50:
        raise SpecFileError(f"{key} has {len(out)} commands; at most 50 are allowed", line)
    return out


def parse_spec_file(text: str) -> SpecFile:
    """Parse a `.nightshift.toml`; raise SpecFileError naming the line and the reason."""
    if len(text.encode()) > SPEC_FILE_MAX_BYTES:
        raise SpecFileError(f"is larger than {SPEC_FILE_MAX_BYTES} bytes")
    lines = text.splitlines()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT_RE.search(message)
        at_line = int(at.group(1)) if at else max(len(lines), 1)
        reason = _TOML_AT_RE.sub("", message).replace("(at end of document)", "").strip()
        raise SpecFileError(f"not valid TOML: {reason}", at_line) from exc
    for key in data:
        if key not in SPEC_FILE_KEYS:
            raise SpecFileError(
                f"unknown key {key!r} (allowed: {', '.join(SPEC_FILE_KEYS)})",
                _key_line(lines, key) or _table_line(lines, key),
            )
    result = SpecFile()
    for key in ("setup", "warm", "verify", "protected"):
        if key in data:
            setattr(result, key, _commands(data[key], key, _key_line(lines, key)))
    if "egress" in data:
        line = _key_line(lines, "egress")
        value = data["egress"]
        if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
            raise SpecFileError("egress must be a list of host names", line)
        try:
            result.egress = check_hosts(value)
        except ValueError as exc:
            raise SpecFileError(str(exc), line) from exc
    for key, check in (("image", check_image), ("dockerfile", None), ("context", None)):
        if key not in data:
            continue
        line = _key_line(lines, key)
        value = data[key]
        if not isinstance(value, str):
            raise SpecFileError(f"{key} must be a string, got {type(value).__name__}", line)
        try:
            setattr(result, key, check(value) if check else check_repo_path(value, key))
        except ValueError as exc:
            raise SpecFileError(str(exc), line) from exc
    if "devcontainer" in data:
        if not isinstance(data["devcontainer"], bool):
            raise SpecFileError(
                "devcontainer must be true or false", _key_line(lines, "devcontainer")
            )
        result.use_devcontainer = data["devcontainer"]
    if result.image is not None and result.dockerfile is not None:
        raise SpecFileError(
            "image and dockerfile are exclusive; give one of them", _key_line(lines, "dockerfile")
        )
    if result.context is not None and result.dockerfile is None:
        raise SpecFileError(
            "context is the Dockerfile's build context; it needs dockerfile",
            _key_line(lines, "context"),
        )
    if "ci_fix_attempts" in data:
        value = data["ci_fix_attempts"]
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= SPEC_CI_FIX_MAX
        ):
            raise SpecFileError(
                f"ci_fix_attempts must be a whole number from 0 to {SPEC_CI_FIX_MAX}",
                _key_line(lines, "ci_fix_attempts"),
            )
        result.ci_fix_attempts = value
    if "env" in data:
        value = data["env"]
        table_line = _key_line(lines, "env") or _table_line(lines, "env")
        if not isinstance(value, dict):
            raise SpecFileError('env must be a table of NAME = "value"', table_line)
        env: dict[str, str] = {}
        for name, item in value.items():
            line = _key_line(lines, name, "env") or table_line
            if not isinstance(item, str):
                raise SpecFileError(f"env.{name} must be a string, got {type(item).__name__}", line)
            try:
                check_env({name: item})
            except ValueError as exc:
                raise SpecFileError(str(exc), line) from exc
            env[name] = item
        result.env = env
    try:
        pages = parse_pages(data)
    except ValueError as exc:
        line = next((_key_line(lines, k) for k in PAGE_KEYS if k in data), None)
        raise SpecFileError(str(exc), line) from exc
    result.serve, result.serve_port = pages.serve, pages.serve_port
    result.screenshots = pages.screenshots
    return result


def read_spec_file(workspace: Path) -> SpecFile | None:
    """The `.nightshift.toml` of a fresh host-side clone; symlinks are refused, not followed."""
    try:
        fd = os.open(workspace / SPEC_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecFileError("must be a regular file, not a symlink") from exc
        raise SpecFileError(f"cannot be read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecFileError("must be a regular file")
        if st.st_size > SPEC_FILE_MAX_BYTES:
            raise SpecFileError(f"is larger than {SPEC_FILE_MAX_BYTES} bytes")
        data = os.read(fd, SPEC_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return parse_spec_file(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecFileError("is not UTF-8 text") from exc
