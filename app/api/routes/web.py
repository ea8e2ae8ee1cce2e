"""The browser client: static pages from `web/`, no build step.

Every page is a static HTML file whose ES modules (under `/static/js/`) talk to the API; a
page needs no server-side rendering, so a shared link always loads the same page and the page
fetches what the signed-in person may see.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parents[3] / "web"
router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    path = WEB_DIR / name
    if not path.is_file():
        raise HTTPException(404, f"web page {name} is missing from {WEB_DIR}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/")
def sessions_page() -> FileResponse:
    return _page("index.html")


@router.get("/new")
def new_page() -> FileResponse:
    return _page("new.html")


@router.get("/sessions/{session_id}")
def session_page(session_id: str) -> FileResponse:
    return _page("session.html")


@router.get("/pulls/{pr_id}")
def pull_page(pr_id: str) -> FileResponse:
    return _page("pull.html")


@router.get("/stats")
def stats_page() -> FileResponse:
    return _page("stats.html")


@router.get("/signin")
def signin_page() -> FileResponse:
    return _page("signin.html")


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


class _RevalidatedFiles(StaticFiles):
    """Static files the browser checks before reuse (ETag), so a deploy is seen at once."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_static(app: FastAPI) -> None:
    if WEB_DIR.is_dir():
        app.mount("/static", _RevalidatedFiles(directory=WEB_DIR), name="static")
