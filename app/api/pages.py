"""Small HTML pages the server answers itself (sign-in and link outcomes), outside the web app."""

from __future__ import annotations

import html

from fastapi.responses import HTMLResponse


def html_page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A self-contained page; `body` is HTML the caller has escaped."""
    return HTMLResponse(
        f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{html.escape(title)} · Nightshift</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#1d1c1d}}
h1{{font-size:1.4rem}}button,.button{{font:inherit;padding:.5rem 1rem;border-radius:6px;border:0;background:#4a154b;color:#fff;cursor:pointer;text-decoration:none;display:inline-block}}
input{{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0 .8rem}}.muted{{color:#616061;font-size:.9rem}}</style>
</head><body><h1>{html.escape(title)}</h1>{body}</body></html>""",
        status_code=status,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )
