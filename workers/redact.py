"""Redaction of credentials from every event, tool output and log line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

PLACEHOLDER = "[redacted]"
_PATTERNS = [
    r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens (personal, OAuth, user, server, refresh)
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"sk-(?:ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic keys
    r"ns_[A-Za-z0-9_-]{30,}",  # our own API tokens
    r"AKIA[0-9A-Z]{16}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # user:password@ in URLs
]


class Redactor:
    """Replaces known secret values and anything shaped like a token."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern = re.compile("|".join(_PATTERNS))
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= 8)
        self._literal = (
            re.compile("|".join(re.escape(s) for s in sorted(self._secrets, key=len, reverse=True)))
            if self._secrets
            else None
        )

    def text(self, value: str) -> str:
        if self._literal is not None:
            value = self._literal.sub(PLACEHOLDER, value)
        return self._pattern.sub(PLACEHOLDER, value)

    def value(self, value: Any) -> Any:
        """Redact strings anywhere inside JSON-like data."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor.text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True
