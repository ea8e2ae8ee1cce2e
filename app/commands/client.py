"""The CLI's client of a Nightshift server: REST over httpx, the event stream over WebSocket.

`run`, `attach`, `prompt`, `stop` and `sessions` speak only this public API, so the terminal sees
exactly what the web viewer sees: one writer (the server) of each session, the server's own
public links, and a stream that resumes with `after=<last id>` when the connection drops.
Errors are `ApiError` with the server's own message; the commands turn them into one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.errors import AppError
from app.overload import shed_retry_s
from workers.control_http import CLIENT_KEEP_ALIVE_S
from workers.events import Event, StatusChanged, parse_event

DEFAULT_SERVER = "http://127.0.0.1:8000"
RESTING = frozenset({"idle", "finished", "failed", "stopped"})
"""Statuses in which a session does no work until someone prompts it again."""
RECONNECT_FOR_S = 120.0
"""How long a dropped stream keeps trying to reconnect before giving up."""
SHED_PATIENCE_S = 120.0
"""How long a prompt the server sheds (busy: 503, nothing done) is sent again before giving up."""


class ApiError(AppError):
    """A request the server refused (its message), or a server that does not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(ApiError):
    """No server answers at the URL."""


def normalize(url: str) -> str:
    """A server URL as credentials are keyed: scheme and host lower-case, no trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if scheme.lower() not in ("http", "https") or not host:
        raise ApiError(f"{url!r} is not a server URL (write http://host:port)")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def credentials_path() -> Path:
    """`$XDG_CONFIG_HOME/nightshift/credentials.json` (XDG_CONFIG_HOME defaults to ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nightshift" / "credentials.json"


def _read_credentials() -> dict[str, Any]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"servers": {}}
    except (OSError, ValueError) as exc:
        raise ApiError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        raise ApiError(f"{path} is not a Nightshift credentials file; remove it and log in again")
    return data


def stored_token(server: str) -> str | None:
    """The token `nightshift login` stored for `server`, if any."""
    entry = _read_credentials()["servers"].get(normalize(server))
    return entry.get("token") if isinstance(entry, dict) else None


def store_token(server: str, token: str, login: str) -> Path:
    """Keep `token` for `server`, readable by the user only (the file is mode 0600)."""
    data = _read_credentials()
    data["servers"][normalize(server)] = {"token": token, "login": login}
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.chmod(partial, 0o600)  # an older file made under another umask
    partial.replace(path)
    return path


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
        )
    return str(detail or body)


@dataclass
class Client:
    """One server, one caller (a bearer token, or none for a NIGHTSHIFT_AUTH=local server)."""

    server: str
    token: str | None = None
    timeout: float = 30.0
    on_busy: Callable[[float, str], None] | None = None
    """Told (seconds until the next try, the server's words) each time a request is shed."""
    patience_s: float = SHED_PATIENCE_S

    def __post_init__(self) -> None:
        self.server = normalize(self.server)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S),
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; a refusal raises `ApiError` with the server's words.

        A request the server shed (busy taking in other prompts; nothing was done) is sent
        again after the wait it asked for, for up to `patience_s`."""
        give_up = time.monotonic() + self.patience_s
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(f"no Nightshift server answers at {self.server}") from exc
            wait = shed_retry_s(response.status_code, response.headers)
            if wait is None or time.monotonic() + wait > give_up:
                break
            if self.on_busy is not None:
                self.on_busy(wait, _detail(response))
            time.sleep(wait)
        if response.status_code >= 400:
            message = _detail(response)
            if response.status_code == 401:
                message += " (run `nightshift login` with an API token for this server)"
            raise ApiError(message, response.status_code)
        return response.json() if response.content else None

    def health(self) -> dict[str, Any]:
        """`/healthz`; `Unreachable` unless a Nightshift server answers."""
        try:
            body = self.request("GET", "/healthz", timeout=3)
        except Unreachable:
            raise
        except ApiError as exc:  # something answers, but not as a Nightshift server would
            raise Unreachable(f"no Nightshift server answers at {self.server} ({exc})") from exc
        if not isinstance(body, dict) or body.get("status") != "ok":
            raise Unreachable(f"{self.server} does not answer as a Nightshift server")
        return body

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/api/me")
        return result

    def repos(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/api/repos")
        return result

    def add_repo(self, url: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/repos", json={"url": url})
        return result

    def create_repo(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /api/repos` with a whole registration (`RepoCreate`'s fields)."""
        result: dict[str, Any] = self.request("POST", "/api/repos", json=body)
        return result

    def list_repos(self, removed: bool = False) -> list[dict[str, Any]]:
        """The repos in use; with `removed`, the removed ones too (with `removed_at`)."""
        params = {"removed": "true"} if removed else {}
        result: list[dict[str, Any]] = self.request("GET", "/api/repos", params=params)
        return result

    def repo(self, name: str) -> dict[str, Any]:
        """A repo with its effective spec (`RepoDetail`); a removed one too."""
        result: dict[str, Any] = self.request("GET", _repo_path(name))
        return result

    def update_repo(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """`PATCH`: the fields in `changes`, the rest kept; the server rebuilds the image."""
        result: dict[str, Any] = self.request("PATCH", _repo_path(name), json=changes)
        return result

    def remove_repo(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", _repo_path(name))
        return result

    def create_session(self, repo: str, prompt: str, model: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"repo": repo, "prompt": prompt}
        if model is not None:
            body["model"] = model
        result: dict[str, Any] = self.request("POST", "/api/sessions", json=body)
        return result

    def session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/sessions/{_seg(session_id)}")
        return result

    def sessions(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        result: dict[str, Any] = self.request("GET", "/api/sessions", params=params)
        return result

    def prompts(self, session_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request(
            "GET", f"/api/sessions/{_seg(session_id)}/prompts"
        )
        return result

    def add_prompt(self, session_id: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/api/sessions/{_seg(session_id)}/prompts", json={"text": text}
        )
        return result

    def stop(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/api/sessions/{_seg(session_id)}/stop")
        return result

    def events(self, session_id: str, after: int = 0) -> list[Event]:
        """Every stored event with id > `after`, oldest first."""
        found: list[Event] = []
        while True:
            page = self.request(
                "GET",
                f"/api/sessions/{_seg(session_id)}/events",
                params={"after": after, "limit": 1000},
            )
            found.extend(parse_event(item) for item in page)
            if len(page) < 1000:
                return found
            after = page[-1]["id"]

    def stream_url(self, session_id: str, after: int) -> str:
        scheme = "wss" if self.server.startswith("https://") else "ws"
        rest = self.server.partition("://")[2]
        return f"{scheme}://{rest}/api/sessions/{_seg(session_id)}/stream?after={after}"

    async def follow(
        self,
        session_id: str,
        after: int,
        until: Callable[[Event], bool],
        on_event: Callable[[Event], None],
        on_reconnect: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> int:
        """Print-side loop of the WebSocket stream: each event with id > `after` goes to
        `on_event` once, in order, until `until(event)` holds; returns the last id seen.

        A dropped connection (server restart, network) reconnects with `after=<last id>` for
        up to RECONNECT_FOR_S; a refusal (close code 4xxx) raises `ApiError` with its reason.
        """
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        last = after
        lost_at: float | None = None
        while True:
            try:
                ws = await websockets.connect(
                    self.stream_url(session_id, last),
                    additional_headers=headers,
                    compression=None,
                    open_timeout=10,
                    max_size=2**24,
                )
                try:
                    lost_at = None
                    async for frame in ws:
                        data = json.loads(frame)
                        if "id" not in data or int(data["id"]) <= last:
                            continue  # presence frames, or a replayed id already shown
                        event = parse_event(data)
                        last = int(data["id"])
                        on_event(event)
                        if until(event):
                            return last
                    code, reason = ws.close_code, ws.close_reason
                finally:
                    # A polite close, but never wait on it: the events are all in hand.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(), 1)
                    ws.transport.abort()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):
                    raise ApiError(f"the stream was refused ({status})", status) from exc
                code, reason = None, f"HTTP {status}"
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                code, reason = None, str(exc) or type(exc).__name__
            if code is not None and 4400 <= code < 4500 and code != 4429:
                raise ApiError(reason or f"the stream was refused ({code})", code - 4000)
            now = time.monotonic()
            lost_at = lost_at or now
            if now - lost_at > RECONNECT_FOR_S:
                raise Unreachable(
                    f"lost the stream from {self.server} for {RECONNECT_FOR_S:.0f}s ({reason})"
                )
            if on_reconnect is not None:
                shown = on_reconnect(f"connection lost; resuming after event {last}…")
                if shown is not None:
                    await shown
            await asyncio.sleep(0.5)


def _seg(session_id: str) -> str:
    """A session id as one path segment: an id with `/` or `?` must not reach another route."""
    from urllib.parse import quote

    return quote(session_id, safe="")


def _repo_path(name: str) -> str:
    """A repo's API path: an `owner/name` keeps its slash (the route takes it), every part
    quoted so `?` or `#` in a name cannot reach another route."""
    from urllib.parse import quote

    return "/api/repos/" + "/".join(quote(part, safe="") for part in name.split("/"))


def until_resting(
    since: int, prompt_id: int | None = None, through: int | None = None
) -> Callable[[Event], bool]:
    """Stop at the first resting status after event `since` (older ones are history) and,
    with `prompt_id`, after that prompt was queued (a status before it is the prompt ahead's).
    With `through` (a session already resting), stop at that event id."""
    seen = {"prompt": prompt_id is None}

    def done(event: Event) -> bool:
        if through is not None and event.id >= through:
            return True
        if event.id <= since:
            return False
        if prompt_id is not None and event.prompt_id == prompt_id:
            seen["prompt"] = True
        return seen["prompt"] and isinstance(event, StatusChanged) and event.status in RESTING

    return done
