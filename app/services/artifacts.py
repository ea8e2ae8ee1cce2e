"""Artifacts: files an agent made for people to look at (screenshots), kept by the API.

Content-addressed: `<data>/artifacts/<sha256[:2]>/<sha256>.png` holds the bytes once, however
many sessions made the same picture; `<data>/artifacts/sessions/<id[:2]>/<id>/<sha256>` marks
that a session made it, so a session's link serves only that session's artifacts and each path
stays keyed by one session id (no request touches another session's files). What is stored is
model-driven output: it is checked to be a PNG, capped in size, and served with headers that
stop a browser from running it as anything else (`app/api/routes/artifacts.py`).

A pull request is often read where nobody is signed in to Nightshift (GitHub), so each stored
artifact also gets a shared link, `/shared/artifacts/<session>/<sha256>/<token>`: the token is
an HMAC of the session and artifact ids under a random key kept in the data dir
(`artifacts/.share-key`, mode 0600), so it cannot be guessed, opens that one PNG only, and every
shared link dies at once when the key file is deleted (`app/api/routes/shared.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from app.errors import Invalid, NotFound
from workers.control import MAX_ARTIFACT_BYTES, ArtifactStored

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ID = re.compile(r"[0-9a-f]{64}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
SHARE_KEY = ".share-key"


def artifact_url(session_id: str, artifact_id: str) -> str:
    return f"/api/sessions/{session_id}/artifacts/{artifact_id}"


def shared_url(session_id: str, artifact_id: str, token: str) -> str:
    return f"/shared/artifacts/{session_id}/{artifact_id}/{token}"


class Artifacts:
    """The artifact store of a data dir; it holds no state beyond the files."""

    @classmethod
    def of(cls, data_dir: Path) -> Artifacts:
        return cls(data_dir / "artifacts")

    def __init__(self, root: Path, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _blob(self, artifact_id: str) -> Path:
        return self.root / artifact_id[:2] / f"{artifact_id}.png"

    def _mark(self, session_id: str, artifact_id: str) -> Path:
        if not _SESSION.fullmatch(session_id):
            raise NotFound(f"no session {session_id!r}")
        return self.root / "sessions" / session_id[:2] / session_id / artifact_id

    def store(self, session_id: str, data: bytes) -> ArtifactStored:
        """Keep `data` (a PNG) as an artifact of the session; its id is its SHA-256."""
        if len(data) > self.max_bytes:
            raise Invalid(f"an artifact may hold at most {self.max_bytes} bytes")
        if not data.startswith(PNG_MAGIC):
            raise Invalid("an artifact must be a PNG image")
        artifact_id = hashlib.sha256(data).hexdigest()
        blob = self._blob(artifact_id)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            part = blob.with_name(f".{artifact_id}.{secrets.token_hex(4)}.part")
            part.write_bytes(data)
            os.replace(part, blob)  # readers never see half a file
        mark = self._mark(session_id, artifact_id)
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
        return ArtifactStored(
            id=artifact_id,
            url=artifact_url(session_id, artifact_id),
            bytes=len(data),
            shared_url=shared_url(session_id, artifact_id, self.token(session_id, artifact_id)),
        )

    def _share_key(self) -> bytes:
        """The data dir's key for shared links, made (0600) the first time one is needed."""
        path = self.root / SHARE_KEY
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.root / f"{SHARE_KEY}.{secrets.token_hex(4)}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(part, path)  # the first writer wins; others read what it wrote
        except FileExistsError:
            pass
        finally:
            part.unlink()
        return path.read_bytes()

    def token(self, session_id: str, artifact_id: str) -> str:
        """The shared link's token of one artifact of one session."""
        message = f"{session_id}/{artifact_id}".encode()
        return hmac.new(self._share_key(), message, hashlib.sha256).hexdigest()[:32]

    def shared_path(self, session_id: str, artifact_id: str, token: str) -> Path:
        """The file a shared link names; NotFound, saying nothing more, for any wrong part."""
        gone = NotFound("no such shared artifact")
        if not (_TOKEN.fullmatch(token) and _ID.fullmatch(artifact_id)):
            raise gone
        if not _SESSION.fullmatch(session_id) or not (self.root / SHARE_KEY).is_file():
            raise gone
        if not hmac.compare_digest(token, self.token(session_id, artifact_id)):
            raise gone
        try:
            return self.path(session_id, artifact_id)
        except NotFound:
            raise gone from None

    def path(self, session_id: str, artifact_id: str) -> Path:
        """The file of one of the session's artifacts; NotFound for any other."""
        if not _ID.fullmatch(artifact_id) or not self._mark(session_id, artifact_id).is_file():
            raise NotFound(f"no artifact {artifact_id!r} in session {session_id!r}")
        blob = self._blob(artifact_id)
        if not blob.is_file():
            raise NotFound(f"artifact {artifact_id!r} is gone")
        return blob
