"""Encryption at rest for people's GitHub tokens: Fernet, with rotatable keys.

`NIGHTSHIFT_SECRET_KEYS` is a comma-separated list of Fernet keys. The first encrypts; every
key decrypts. To rotate: put a new key first, keep the old ones after it, restart, run
`nightshift github rotate-keys` (re-encrypts every stored token under the first key), then drop
the old keys.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import AppError


class BadKeys(AppError, ValueError):
    """NIGHTSHIFT_SECRET_KEYS is malformed."""


def new_key() -> str:
    return Fernet.generate_key().decode()


def parse_keys(raw: str) -> list[Fernet]:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise BadKeys(
            "NIGHTSHIFT_SECRET_KEYS is empty; generate a key with `nightshift github secret-key`"
        )
    fernets = []
    for position, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError) as exc:
            raise BadKeys(
                f"NIGHTSHIFT_SECRET_KEYS entry {position} is not a Fernet key (32 url-safe "
                "base64-encoded bytes); generate one with `nightshift github secret-key`"
            ) from exc
    return fernets


class Undecryptable(AppError):
    """A stored secret was encrypted under a key that is no longer configured."""


class TokenCipher:
    def __init__(self, raw_keys: str) -> None:
        self._fernet = MultiFernet(parse_keys(raw_keys))

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str) -> str:
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken as exc:
            raise Undecryptable(
                "a stored token cannot be decrypted with NIGHTSHIFT_SECRET_KEYS (was a key "
                "removed before `nightshift github rotate-keys` ran?)"
            ) from exc

    def rotate(self, value: str) -> str:
        """The same secret re-encrypted under the first key."""
        try:
            return self._fernet.rotate(value.encode()).decode()
        except InvalidToken as exc:
            raise Undecryptable(
                "a stored token cannot be decrypted with any configured key"
            ) from exc

    def seal(self, value: str) -> str:
        """Encrypt a short-lived value (OAuth state) for a cookie."""
        return self.encrypt(value)

    def unseal(self, value: str, ttl_s: int) -> str | None:
        """The sealed value if it is intact and at most `ttl_s` old, else None."""
        try:
            return self._fernet.decrypt(value.encode(), ttl=ttl_s).decode()
        except InvalidToken:
            return None
