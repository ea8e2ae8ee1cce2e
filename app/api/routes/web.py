"""The browser client: static pages from `web/`, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

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


@router.get("/stats")
def stats_page() -> FileResponse:
    return _page("stats.html")


def mount_static(app: FastAPI) -> None:
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
