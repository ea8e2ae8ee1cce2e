"""Redaction of credentials from every event, tool output and log line."""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = "[redacted]"
_PATTERNS = [
    # GitHub tokens (personal, OAuth, user, server, refresh), including the newer
    # `ghs_<app id>_<JWT>` installation-token shape with dots, dashes and underscores.
    r"gh[pousr]_[A-Za-z0-9][A-Za-z0-9_.\-]{19,}",
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"sk-(?:ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic keys
    r"ns_[A-Za-z0-9_-]{30,}",  # our own API tokens
    r"AKIA[0-9A-Z]{16}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?<=://)[^/\s:@]*:[^/\s@]+(?=@)",  # [user]:password@ in URLs (redis://:pw@ too)
]
_ANCHORS = (
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "sk-", "ns_", "AKIA"),
    *("PRIVATE KEY-----", "://"),
)
"""A text none of the patterns can match holds none of these (each pattern needs one): a
substring test is several times faster than the patterns' scan, and most text has none."""


class Redactor:
    """Replaces known secret values and anything shaped like a token.

    Literal secrets (keys from settings, tokens minted at run time) are kept most recent first
    and capped, so a long-running server that mints a token an hour does not grow forever.
    """

    MAX_LITERALS = 2000

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._pattern = re.compile("|".join(_PATTERNS))
        self._literal: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(secrets)

    def learn(self, secret: str) -> None:
        """Redact `secret` from now on (a token minted at run time). A value the patterns
        already catch needs no literal entry: the capped list keeps room for the rest."""
        if self.text(secret) != PLACEHOLDER:
            self.add([secret])

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            changed = False
            for secret in secrets:
                if not secret or len(secret) < 8:
                    continue
                if secret in self._secrets:
                    self._secrets.move_to_end(secret)
                    continue
                self._secrets[secret] = None
                changed = True
            while len(self._secrets) > self.MAX_LITERALS:
                self._secrets.popitem(last=False)
            if changed:
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._literal = re.compile("|".join(re.escape(s) for s in ordered))

    def text(self, value: str) -> str:
        if self._literal is not None:
            value = self._literal.sub(PLACEHOLDER, value)
        if not any(anchor in value for anchor in _ANCHORS):
            return value
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


_ACTIVE: weakref.WeakSet[Redactor] = weakref.WeakSet()
_factory_installed = False
_PLAIN = (int, float, bool, type(None))


def _redact_all(text: str) -> str:
    for active in list(_ACTIVE):
        text = active.text(text)
    return text


def _clean_arg(value: Any) -> Any:
    """`value` with secrets redacted, keeping its type when it holds none (so `%d` still
    formats it); an object whose text holds a secret becomes that text, redacted."""
    if isinstance(value, str):
        return _redact_all(value)
    if isinstance(value, _PLAIN):
        return value
    for text in (str(value), repr(value)):
        if _redact_all(text) != text:
            return _redact_all(str(value))
    return value


def _clean(record: logging.LogRecord) -> None:
    """Redact `record` in place, keeping the shape of `msg` and `args`: formatters such as
    uvicorn's access log unpack `record.args` themselves, so they must stay a tuple (or the
    mapping) of the same length."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error handling
        return
    cleaned = _redact_all(message)
    if cleaned == message:
        return
    if isinstance(record.msg, str):
        record.msg = _redact_all(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(a) for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: _clean_arg(v) for k, v in record.args.items()}
    try:
        still = record.getMessage()
    except Exception:
        still = message
    if _redact_all(still) != still:
        # A secret only the whole message shows (split across arguments): give up the shape.
        record.msg, record.args = cleaned, ()


def install_log_redaction(redactor: Redactor) -> None:
    """Redact every log record of this process, whatever logger or handler it goes through.

    A filter on one logger would miss records of its children (logging applies a logger's
    filters only to records logged on it), so the record factory does it instead.
    """
    global _factory_installed
    _ACTIVE.add(redactor)
    if _factory_installed:
        return
    _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _clean(record)
        return record

    logging.setLogRecordFactory(factory)
