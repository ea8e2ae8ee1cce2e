"""The API's shape: routes take the services they use (never the whole runtime), every route
is authenticated unless it is on the list of public ones, and one reader parses credentials."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import routing
from fastapi.dependencies.models import Dependant
from starlette.requests import HTTPConnection

from app.api import deps
from app.api.credentials import COOKIE_NAME, Credential, bearer_token, read_credential
from app.api.routes import internal, peers
from app.main import create_app

API = Path(__file__).resolve().parents[2] / "app" / "api"
RUNTIME_NAMES = {"Runtime", "RuntimeDep", "get_runtime", "build_runtime"}
"""Names a route module has no business importing: they hand it every service at once."""
AUTHENTICATORS = {
    deps.current_user: "the caller of a request (bearer token, cookie or local user)",
    deps.stream_user: "the caller of a server-sent event stream (may pass ?token=)",
    deps.websocket_admission: "the caller of a WebSocket, refused with a close code",
    internal.require_worker: "a remote worker (X-Nightshift-Worker-Token)",
    peers.require_peer: "another API process (X-Nightshift-Peer, signed)",
}
PUBLIC = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    # Signing in and out: before anyone is signed in, or acting on the browser's own cookie.
    ("GET", "/auth/github/login"),
    ("GET", "/auth/github/link"),
    ("GET", "/auth/github/callback"),
    ("POST", "/auth/logout"),
    ("GET", "/api/auth/state"),
    ("POST", "/api/auth/token"),
    # Webhooks: signed by the sender, checked by the handler.
    ("POST", "/github/webhooks"),
    ("POST", "/slack/events"),
    # The Slack link pages: the one-time code is the credential, sign-in happens on them.
    ("GET", "/slack/link/{code}"),
    ("POST", "/slack/link/{code}"),
    ("POST", "/slack/link/{code}/github"),
    # A pull request's screenshots, for readers not signed in (GitHub): the HMAC token in the
    # path is the credential (`app/api/routes/shared.py`).
    ("GET", "/shared/artifacts/{session_id}/{artifact_id}/{token}"),
    # Static pages of the web client; they fetch what the signed-in person may see.
    ("GET", "/"),
    ("GET", "/new"),
    ("GET", "/sessions/{session_id}"),
    ("GET", "/pulls/{pr_id}"),
    ("GET", "/stats"),
    ("GET", "/signin"),
    ("GET", "/favicon.ico"),
}


def _modules() -> list[Path]:
    """Every module of the API except `deps.py`, the one that reads the app's state."""
    return sorted(p for p in API.rglob("*.py") if p != API / "deps.py")


def _runtime_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module == "app.runtime":
                found.append(f"line {node.lineno}: imports app.runtime")
            found += [
                f"line {node.lineno}: imports {a.name}"
                for a in node.names
                if a.name in RUNTIME_NAMES
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: imports {a.name}"
                for a in node.names
                if a.name == "app.runtime"
            ]
        elif isinstance(node, ast.Attribute) and node.attr in ("state", "runtime"):
            found.append(f"line {node.lineno}: reads .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in RUNTIME_NAMES:
            found.append(f"line {node.lineno}: names {node.id}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr")
            and any(
                isinstance(a, ast.Constant) and a.value in ("state", "runtime") for a in node.args
            )
        ):
            found.append(f"line {node.lineno}: {node.func.id} of the state or runtime")
    return found


def test_no_api_module_but_deps_reaches_for_the_runtime() -> None:
    """A route states the services it uses (`SessionsDep`, `HubDep`, ...); only `deps.py`
    reads `app.state`, one getter per service."""
    modules = _modules()
    assert API / "routes" / "sessions.py" in modules and API / "pages.py" in modules
    found = {
        str(path.relative_to(API)): uses
        for path in modules
        if (uses := _runtime_uses(ast.parse(path.read_text(), str(path))))
    }
    assert found == {}


def test_the_runtime_check_sees_each_way_of_reaching_it() -> None:
    """The check above finds an import, a dependency and a read of the app's state."""
    for source in (
        "from app.runtime import Runtime",
        "import app.runtime",
        "from app.api.deps import RuntimeDep",
        "def f(request):\n    return request.app.state.runtime.sessions",
        "def f(websocket):\n    return getattr(websocket.app, 'state')",
    ):
        assert _runtime_uses(ast.parse(source)), source


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _endpoints() -> Iterator[tuple[str, str, set[Callable[..., Any]]]]:
    """(method, path, every dependency it runs) of each endpoint of the app as it is served."""
    app = create_app()
    for route in routing.iter_route_contexts(app.routes):
        original = route.original_route
        if isinstance(original, routing.APIWebSocketRoute):
            yield "WEBSOCKET", str(route.path), set(_calls(route.dependant))
        elif isinstance(original, routing.APIRoute):
            for method in sorted(route.methods or ()):
                yield method, str(route.path), set(_calls(route.dependant))
        elif route.methods:  # FastAPI's own pages (docs, the OpenAPI document)
            for method in sorted(route.methods - {"HEAD"}):
                yield method, str(route.path), set()


def test_every_endpoint_is_authenticated_unless_it_is_public() -> None:
    served = list(_endpoints())
    assert len(served) > 50
    open_ = sorted(
        (method, path)
        for method, path, calls in served
        if not calls & AUTHENTICATORS.keys() and (method, path) not in PUBLIC
    )
    assert open_ == [], "authenticate these (router-level or a parameter), or list them as public"
    stale = PUBLIC - {(method, path) for method, path, _ in served}
    assert stale == set(), "public endpoints the app no longer serves"


def test_the_authentication_check_sees_an_endpoint_that_takes_no_caller() -> None:
    """An endpoint added without a caller is found: the check is not vacuous."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/open")
    def open_endpoint(sessions: deps.SessionsDep) -> None:
        return None

    @app.get("/api/closed")
    def closed_endpoint(user: deps.CurrentUser) -> None:
        return None

    calls = {
        str(r.path): set(_calls(r.dependant))
        for r in routing.iter_route_contexts(app.routes)
        if isinstance(r.original_route, routing.APIRoute)
    }
    assert not calls["/api/open"] & AUTHENTICATORS.keys()
    assert calls["/api/closed"] & AUTHENTICATORS.keys()


def test_a_websocket_handler_uses_its_admission() -> None:
    """A WebSocket's caller is read before the socket opens and told after it; a handler that
    takes the admission must also ask it for the caller (which raises the refusal)."""
    unused = []
    for path in _modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            takes = [
                a.arg
                for a in fn.args.args
                if isinstance(a.annotation, ast.Name) and a.annotation.id == "WebSocketAdmission"
            ]
            asked = {
                n.func.value.id
                for n in ast.walk(fn)
                if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "caller"
                and isinstance(n.func.value, ast.Name)
            }
            unused += [f"{path.name}:{fn.name}({a})" for a in takes if a not in asked]
    assert unused == []


# ---------------------------------------------------------------- the one credential reader


def _conn(
    headers: dict[str, str] | None = None, query: str = "", scope_type: str = "http"
) -> HTTPConnection:
    return HTTPConnection(
        {
            "type": scope_type,
            "path": "/",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "query_string": query.encode(),
        }
    )


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer ns_abc", "ns_abc"),
        ("bearer   ns_abc  ", "ns_abc"),
        ("Bearer ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearerns_abc", None),
        (None, None),
    ],
)
def test_a_bearer_header_is_read_one_way(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_a_token_wins_over_the_cookie_and_the_query_counts_only_on_streams() -> None:
    cookie = {"Cookie": f"{COOKIE_NAME}=ws_cookie"}
    both = _conn({"Authorization": "Bearer ns_header", **cookie}, "token=ns_query")
    assert read_credential(both) == Credential(token="ns_header", from_header=True)
    assert read_credential(both, query=True) == Credential(token="ns_header", from_header=True)
    query = _conn(cookie, "token=ns_query")
    assert read_credential(query) == Credential(cookie="ws_cookie")
    assert read_credential(query, query=True) == Credential(token="ns_query")
    assert read_credential(_conn(cookie, "token=")) == Credential(cookie="ws_cookie")
    # A page acting for whoever the browser is signed in as reads the cookie alone.
    assert read_credential(both, query=True, tokens=False) == Credential(cookie="ws_cookie")
    # WebSockets are read the same way.
    socket = _conn({"Authorization": "Bearer ns_ws"}, scope_type="websocket")
    assert read_credential(socket, query=True) == Credential(token="ns_ws", from_header=True)
    assert read_credential(_conn()) == Credential()
