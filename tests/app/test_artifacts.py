"""Screenshots end to end: an agent serves the repository with a background job, captures it
with Chromium inside the real bubblewrap sandbox, and the API keeps and serves the PNG to
people who see the session, and only as that session's artifact. The worker's upload route
(distributed mode) is driven by the real HTTP control-plane client.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ApiClient, Person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer
from workers.control_http import HttpControlPlane
from workers.errors import ControlPlaneError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("bwrap") is None or os.geteuid() != 0 or shutil.which("chromium") is None,
        reason="needs bubblewrap on a root host and Chromium",
    ),
]
TOKEN = "worker-token-0123456789abcdef"
PAGE = (
    "<html><body style='margin:0;background:#1e90ff'>"
    "<h1 style='color:white'>Nightshift demo</h1></body></html>\n"
)


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        model_images=True,  # the operator says this endpoint's model sees images
        worker_token=TOKEN,
    )


def pixel(png: bytes, x: int, y: int) -> tuple[int, int, int]:
    """The RGB of one pixel of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    pos, chunks = 8, b""
    width, height, depth, colour = 0, 0, 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[:10])
        elif kind == b"IDAT":
            chunks += data
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(chunks), width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for r in range(height):
        kind, line = (
            raw[r * (stride + 1)],
            bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    px = rows[y][x * bpp : x * bpp + 3]
    return px[0], px[1], px[2]


def test_a_screenshot_of_the_served_app_is_kept_shown_and_served(
    api: ApiClient,
    openai_fake: ScriptBook,
    tmp_path: Path,
    server: BackgroundServer,
    runtime: Any,
    alice: Person,
) -> None:
    repo = make_repo(tmp_path, "site", {"index.html": PAGE})
    api.add_repo(repo)
    wait = "for i in $(seq 100); do curl -fs http://127.0.0.1:8765/ >/dev/null && break; sleep 0.1; done"
    openai_fake.script(
        "home page",
        Turn.tool("run", "Serving.", command="python3 -m http.server 8765", background=True),
        Turn.tool("run", command=wait),
        Turn.tool("screenshot", url="http://127.0.0.1:8765/index.html", width=640, height=400),
        Turn.tool("job_stop", job_id="job1"),
        Turn.tool("finish", summary="Looked at the home page.", title="Look"),
    )
    openai_fake.script("nothing", Turn.tool("finish", summary="Nothing to do."))
    session = api.create("site", "take a screenshot of the home page")
    done = api.wait_status(session["id"], "finished", "failed", timeout=120)
    events = api.events(session["id"])
    assert done["status"] == "finished", events
    created = [e for e in events if e["type"] == "artifact_created"]
    assert len(created) == 1, [e for e in events if e["type"] == "tool_result"]
    art = created[0]
    assert (art["width"], art["height"], art["kind"]) == (640, 400, "screenshot")
    assert art["title"] == "http://127.0.0.1:8765/index.html"
    assert art["url"] == f"/api/sessions/{session['id']}/artifacts/{art['artifact_id']}"

    # Served to a signed-in person, as a PNG that no browser will run as anything else.
    got = api.http.get(art["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"].startswith("sandbox")
    assert hashlib.sha256(got.content).hexdigest() == art["artifact_id"]
    assert pixel(got.content, 600, 380) == (0x1E, 0x90, 0xFF)  # the served page's background
    sha = art["artifact_id"]
    assert (runtime.settings.data_dir / "artifacts" / sha[:2] / f"{sha}.png").read_bytes() == (
        got.content
    )

    # The model saw the image (a user message after the tool results) and the tool's text.
    shown = [
        part
        for request in openai_fake.requests
        for m in request["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for part in m["content"]
    ]
    images = [p["image_url"]["url"] for p in shown if p["type"] == "image_url"]
    assert images and images[0].startswith("data:image/png;base64,iVBOR")
    result = next(e for e in events if e["type"] == "tool_result" and e["name"] == "screenshot")
    assert art["url"] in result["output"] and "iVBOR" not in result["output"]

    # Only people who are signed in, and only under the session that made it.
    assert httpx.get(server.url + art["url"], timeout=30).status_code == 401
    other = api.create("site", "nothing to do here")
    api.wait_status(other["id"], "finished", "failed", timeout=60)
    assert api.http.get(f"/api/sessions/{other['id']}/artifacts/{sha}").status_code == 404
    assert api.http.get(f"/api/sessions/nope/artifacts/{sha}").status_code == 404
    assert (
        api.http.get(f"/api/sessions/{session['id']}/artifacts/..%2F..%2Fcontrol.db").status_code
        == 404
    )
    assert api.http.get(f"/api/sessions/{session['id']}/artifacts/{'0' * 64}").status_code == 404

    # A remote worker uploads over the internal API, capped and checked.
    async def upload() -> None:
        control = HttpControlPlane(server.url, TOKEN, retry_for=0)
        try:
            stored = await control.store_artifact(other["id"], got.content)
            assert stored.id == sha and stored.url.startswith(f"/api/sessions/{other['id']}/")
            with pytest.raises(ControlPlaneError, match="must be a PNG"):
                await control.store_artifact(other["id"], b"<svg onload=alert(1)>")
            with pytest.raises(ControlPlaneError, match="at most"):
                await control.store_artifact(other["id"], b"\x89PNG" + bytes(11 << 20))
            with pytest.raises(ControlPlaneError, match="no session"):
                await control.store_artifact("nope", got.content)
        finally:
            await control.aclose()

    asyncio.run(upload())
    assert api.http.get(f"/api/sessions/{other['id']}/artifacts/{sha}").status_code == 200
    oversized = httpx.post(
        f"{server.url}/internal/v1/sessions/{other['id']}/artifacts",
        content=b"\x89PNG" + bytes(11 << 20),
        headers={"X-Nightshift-Worker-Token": TOKEN},
        timeout=30,
    )
    assert oversized.status_code == 413
    no_token = httpx.post(
        f"{server.url}/internal/v1/sessions/{other['id']}/artifacts",
        content=got.content,
        timeout=30,
    )
    assert no_token.status_code == 401

    # The session page shows it as a thumbnail that links to the full size.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(base_url=server.url)
            cookie = runtime.web_sessions.create(alice.user)
            context.add_cookies(
                [{"name": "nightshift_session", "value": cookie, "url": server.url}]
            )
            page = context.new_page()
            page.goto(f"/sessions/{session['id']}")
            img = page.wait_for_selector(f"figure.shot[data-artifact='{sha}'] img")
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img)
            assert img.evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [640, 400]
            link = page.locator("figure.shot a").get_attribute("href")
            assert link == art["url"]
            assert "640\u00d7400" in page.locator("figure.shot figcaption").inner_text()
        finally:
            browser.close()


SPEC = """
serve = "python3 -m http.server 8770 --bind 127.0.0.1"
serve_port = 8770
screenshots = [{path = "/", name = "home"}, {path = "/gone.html", name = "gone"}]
"""


def test_the_repos_pages_are_captured_from_the_sessions_tree_into_the_pull_request(
    api: ApiClient,
    openai_fake: ScriptBook,
    tmp_path: Path,
    server: BackgroundServer,
    runtime: Any,
    alice: Person,
) -> None:
    repo = make_repo(tmp_path, "pages", {"index.html": PAGE, ".nightshift.toml": SPEC})
    api.add_repo(repo)
    openai_fake.script(
        "make it green",
        Turn.tool(
            "edit_file",
            path="index.html",
            old_text="background:#1e90ff",
            new_text="background:#22aa44",
        ),
        Turn.tool("finish", summary="The page is green now.", title="Green page"),
    )
    session = api.create("pages", "make it green")
    done = api.wait_status(session["id"], "finished", "failed", timeout=120)
    events = api.events(session["id"])
    assert done["status"] == "finished", events
    shots = {e["title"]: e for e in events if e["type"] == "artifact_created"}
    assert sorted(shots) == ["gone (after)", "gone (before)", "home (after)", "home (before)"]
    after = api.http.get(shots["home (after)"]["url"])
    before = api.http.get(shots["home (before)"]["url"])
    assert after.status_code == before.status_code == 200
    # "After" is the session's tree (the agent's change), "before" the base commit.
    assert pixel(after.content, 1200, 700) == (0x22, 0xAA, 0x44)
    assert pixel(before.content, 1200, 700) == (0x1E, 0x90, 0xFF)

    pr = api.http.get("/api/repos/pages/pulls/1").json()
    body = pr["body"]
    assert body.startswith("The page is green now.") and "### Screenshots (before" in body
    base = pr["url"].split("/pulls/")[0]  # the server's public URL
    links = dict(re.findall(r"!\[([\w-]+:(?:before|after))\]\(([^)]+)\)", body))
    assert sorted(links) == ["gone:after", "gone:before", "home:after", "home:before"]
    row = next(line for line in body.splitlines() if line.startswith("| **home**"))
    assert row.index("home:before") < row.index("home:after")  # side by side, before first
    assert "(unchanged)" not in row
    # The missing page looks the same on both sides: said in its row.
    gone = next(line for line in body.splitlines() if line.startswith("| **gone**"))
    assert "(unchanged)" in gone
    # Shared links, absolute: the PR is read where nobody is signed in to Nightshift.
    assert links["home:after"].startswith(f"{base}/shared/artifacts/{session['id']}/")
    shared = server.url + links["home:after"].removeprefix(base)  # no cookie, no token
    anonymous = httpx.get(shared, timeout=30)
    assert anonymous.status_code == 200 and anonymous.content == after.content
    assert anonymous.headers["content-type"] == "image/png"
    assert anonymous.headers["x-content-type-options"] == "nosniff"
    # The token is the key: a changed one, or another artifact under this one, is refused.
    wrong = shared[:-1] + ("0" if shared[-1] != "0" else "1")
    assert httpx.get(wrong, timeout=30).status_code == 404
    before_id = links["home:before"].split("/")[-2]
    swapped = shared.replace(shared.split("/")[-2], before_id)
    assert httpx.get(swapped, timeout=30).status_code == 404
    # Deleting the data dir's share key revokes every shared link at once.
    key = runtime.settings.data_dir / "artifacts" / ".share-key"
    saved = key.read_bytes()
    key.unlink()
    assert httpx.get(shared, timeout=30).status_code == 404
    key.write_bytes(saved)
    assert httpx.get(shared, timeout=30).status_code == 200

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(base_url=server.url)
            cookie = runtime.web_sessions.create(alice.user)
            context.add_cookies(
                [{"name": "nightshift_session", "value": cookie, "url": server.url}]
            )
            page = context.new_page()
            page.goto(pr["url"].removeprefix(base))
            img = page.wait_for_selector("#shots figure.shot[data-name=home] img[data-side=after]")
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img)
            assert img.evaluate("(img) => img.naturalWidth") == 1280
            assert page.locator("#shots figure.shot").count() == 2
            pair = page.locator("#shots figure.shot.pair[data-name=home] img")
            assert pair.evaluate_all("(imgs) => imgs.map((i) => i.dataset.side)") == [
                "before",
                "after",
            ]
            # Side by side: the before image's right edge is left of the after image.
            boxes = [pair.nth(i).bounding_box() for i in range(2)]
            assert boxes[0] and boxes[1] and boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]
        finally:
            browser.close()
