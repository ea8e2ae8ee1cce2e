"""Artifacts: files an agent made for people to look at (screenshots), kept by the API.

Content-addressed: `<data>/artifacts/<sha256[:2]>/<sha256>.png` holds the bytes once, however
many sessions made the same picture; `<data>/artifacts/sessions/<id[:2]>/<id>/<sha256>` marks
that a session made it, so a session's link serves only that session's artifacts and each path
stays keyed by one session id (no request touches another session's files). What is stored is
model-driven output: it is checked to be a PNG, capped in size, and served with headers that
stop a browser from running it as anything else (`app/api/routes/artifacts.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from app.errors import Invalid, NotFound
from workers.control import MAX_ARTIFACT_BYTES, ArtifactStored

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ID = re.compile(r"[0-9a-f]{64}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")


def artifact_url(session_id: str, artifact_id: str) -> str:
    return f"/api/sessions/{session_id}/artifacts/{artifact_id}"


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
            id=artifact_id, url=artifact_url(session_id, artifact_id), bytes=len(data)
        )

    def path(self, session_id: str, artifact_id: str) -> Path:
        """The file of one of the session's artifacts; NotFound for any other."""
        if not _ID.fullmatch(artifact_id) or not self._mark(session_id, artifact_id).is_file():
            raise NotFound(f"no artifact {artifact_id!r} in session {session_id!r}")
        blob = self._blob(artifact_id)
        if not blob.is_file():
            raise NotFound(f"artifact {artifact_id!r} is gone")
        return blob
