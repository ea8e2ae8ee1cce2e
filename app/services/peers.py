"""What an API process asks of the process that owns a session (several API processes).

Requests from clients are forwarded whole by `app/api/forward.py`. This is for the writes
that start elsewhere, with no request for the session behind them: a Slack or GitHub
follow-up (`Sessions.add_prompt`), a stop from Slack (`Sessions.stop`), an event such as a
merged pull request's state (`EventHub.publish`). When another live process owns the session,
they are sent to its `/internal/v1/peers/...` routes (`app/api/routes/peers.py`), signed like
a forwarded request, so only the owner ever writes the session's file.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx

from app.errors import Unavailable
from app.services.ownership import Ownership
from workers.control_http import CLIENT_KEEP_ALIVE_S

PEER_HEADER = "X-Nightshift-Peer"
SIGNATURE_AGE_S = 60
PEERS_PREFIX = "/internal/v1/peers"


class PeerSigner:
    """Signs and checks `X-Nightshift-Peer`: `<unix time>.<hex HMAC-SHA256 of the time, the
    method and the target>` under the secret the API processes share."""

    def __init__(self, secret: str) -> None:
        self.key = secret.encode()

    def _mac(self, stamp: int, method: str, target: str) -> str:
        message = f"{stamp}\n{method}\n{target}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str) -> str:
        stamp = int(time.time())
        return f"{stamp}.{self._mac(stamp, method, target)}"

    def valid(self, value: str, method: str, target: str) -> bool:
        stamp, _, mac = value.partition(".")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            return False
        if abs(time.time() - int(stamp)) > SIGNATURE_AGE_S:
            return False
        return hmac.compare_digest(mac, self._mac(int(stamp), method, target))


class SessionPeers:
    """Whether a session is this process's to write, and the calls to its owner when not."""

    def __init__(self, owners: Ownership, signer: PeerSigner) -> None:
        self.owners = owners
        self.signer = signer
        self._http = httpx.Client(
            timeout=30.0,
            trust_env=False,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S),
        )

    def local(self, session_id: str) -> str | None:
        """None when this process owns the session (claiming it if nobody live does, or when
        there is no such session: the caller's own check answers that); else the owner's URL."""
        if self.owners.holds(session_id):
            return None
        owner = self.owners.owner(session_id)
        return None if owner is None or owner.mine else owner.peer_url

    def call(self, peer_url: str, session_id: str, action: str, body: dict[str, Any]) -> Any:
        target = f"{PEERS_PREFIX}/sessions/{session_id}/{action}"
        try:
            answer = self._http.post(
                peer_url + target,
                json=body,
                headers={PEER_HEADER: self.signer.sign("POST", target)},
            )
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the API process that owns session {session_id} did not answer ({exc}); retry"
            ) from None
        if answer.status_code >= 400:
            raise Unavailable(
                f"the API process that owns session {session_id} refused: "
                f"{answer.status_code} {answer.text[:200]}"
            )
        return answer.json()

    def close(self) -> None:
        self._http.close()
