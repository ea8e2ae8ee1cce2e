"""Webhook signatures: `X-Hub-Signature-256` is an HMAC-SHA256 of the raw body with the secret.

Only SHA-256 is accepted; the legacy `X-Hub-Signature` (`sha1=`) is refused, as is a missing
header. Verify before parsing: a forged body must never reach a JSON parser.
"""

from __future__ import annotations

import hashlib
import hmac

from integrations.errors import IntegrationsError


class InvalidSignature(IntegrationsError):
    """The delivery is not from GitHub (or not for this secret); the message says why."""


def sign(secret: str, body: bytes) -> str:
    """The header value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    """Return when `header` is GitHub's SHA-256 signature of `body`; raise InvalidSignature."""
    if not secret:
        raise InvalidSignature("no webhook secret is configured (GITHUB_WEBHOOK_SECRET)")
    if not header:
        raise InvalidSignature("missing X-Hub-Signature-256 header")
    algorithm, _, digest = header.strip().partition("=")
    if algorithm != "sha256":
        raise InvalidSignature(f"unsupported signature algorithm {algorithm!r}; only sha256")
    if not hmac.compare_digest(sign(secret, body), f"sha256={digest}"):
        raise InvalidSignature("signature does not match the body")
