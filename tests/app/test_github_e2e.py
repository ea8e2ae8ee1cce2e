"""End to end on GitHub: a prompt on a GitHub repo → cloned with the App's token → committed
as the person → pushed from the host → PR opened with the person's own token → merged (a
signed webhook) → counted by the stats. Real API, executor, bubblewrap sandbox and git; fake
GitHub (API + git http-backend) and a fake model over HTTP."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import GitHubEnv
from tests.factories import git, wait_for
from tests.fakes.llm import ScriptBook, Turn

pytestmark = pytest.mark.slow


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_prompt_to_merged_pr_as_the_person_who_asked(
    gh: GitHubEnv, openai_fake: ScriptBook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = gh.fake
    fake.token_style = "stateless"  # `ghs_<app>_<jwt>`: no pattern catches it, only the literal
    remote = fake.add_repo("octo/proj", files={"README.md": "# proj\n"})
    fake.add_user("octocat", "Mona Octocat", "mona@example.com", user_id=583231)
    openai_fake.script(
        "contributing",
        Turn.tool("write_file", "Writing it.", path="CONTRIBUTING.md", content="Be kind.\n"),
        Turn.tool("run", command="git status --short && cat CONTRIBUTING.md"),
        Turn.tool("finish", summary="Added a contributing guide.", title="Add CONTRIBUTING.md"),
    )
    with gh.browser() as browser:
        gh.sign_in(browser, "octocat")
        added = browser.post("/api/repos", json={"url": "octo/proj"})
        assert added.status_code == 201, added.text
        assert added.json()["forge"] == "github"
        created = browser.post(
            "/api/sessions", json={"repo": "octo/proj", "prompt": "add a contributing guide"}
        )
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]

        def finished() -> dict | None:  # type: ignore[type-arg]
            s = browser.get(f"/api/sessions/{session_id}").json()
            return s if s["status"] in ("finished", "failed") else None

        done = wait_for(finished, 60, "the session to finish")
        events = browser.get(f"/api/sessions/{session_id}/events").json()
        assert done["status"] == "finished", events
        branch = f"nightshift/{session_id}"

        # Cloned with the App's installation token.
        clones = [t for r, s, t in fake.git_requests if s == "upload-pack" and t]
        installation = set(fake.issued("installation"))
        assert clones and set(clones) <= installation
        # Committed as the person, with their GitHub name and email; pushed to GitHub.
        log = git(remote.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", branch).strip()
        assert log == (
            "Mona Octocat <mona@example.com>|Mona Octocat <mona@example.com>|Add CONTRIBUTING.md"
        )
        assert git(remote.path, "show", f"{branch}:CONTRIBUTING.md") == "Be kind.\n"
        pushes = [t for r, s, t in fake.git_requests if s == "receive-pack" and t]
        assert pushes and set(pushes) <= installation
        # The PR was opened with the person's own token, not the App's.
        pull = fake.pull("octo/proj", 1)
        assert pull.author == "octocat" and pull.token in fake.issued("user")
        assert pull.head == branch and pull.base == "main"
        assert done["pr_number"] == 1 and done["pr_state"] == "open"
        assert done["pr_url"].endswith("/octo/proj/pull/1")
        diff = browser.get(f"/api/sessions/{session_id}/diff").json()
        assert "+Be kind." in diff["diff"]

        # Merged on GitHub; the signed webhook updates the session and the stats.
        fake.merge("octo/proj", 1)
        r = gh.deliver("pull_request", fake.pull_payload(fake.pull("octo/proj", 1), "closed"))
        assert r.status_code == 202
        wait_for(
            lambda: browser.get(f"/api/sessions/{session_id}").json()["pr_state"] == "merged",
            10,
            "pr_state=merged",
        )
        stats = browser.get("/api/stats").json()
        assert stats["merged"] == 1 and stats["sessions"] == 1
        events = browser.get(f"/api/sessions/{session_id}/events").json()

    # No token of any kind in any event, log line, session file, image, mirror or database.
    secrets = [
        *fake.all_tokens(),
        fake.client_secret,
        gh.runtime.settings.github_webhook_secret.get_secret_value(),
    ]
    assert any(t.startswith("ghs_") for t in secrets)
    assert any(t.startswith("ghu_") for t in secrets)
    assert any(t.startswith("ghr_") for t in secrets)
    # Every minted or received token is known to the redactor, whatever its shape.
    for secret in fake.all_tokens():
        assert secret not in gh.runtime.redactor.text(f"leak: {secret} ..."), secret[:6]
    blobs = {"events": httpx.Response(200, json=events).content}
    blobs["logs"] = "\n".join(r.getMessage() for r in caplog.records).encode()
    blobs["model requests"] = repr(openai_fake.requests).encode()
    gh.runtime.files.close()
    for path in _files(gh.runtime.settings.data_dir):
        blobs[str(path)] = path.read_bytes()
    assert any("/sessions/" in name for name in blobs)
    assert any("/images/" in name for name in blobs)
    assert any("/mirrors/" in name for name in blobs)
    for name, blob in blobs.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"a secret ({secret[:6]}...) leaked into {name}"
