"""Background jobs on a real bubblewrap sandbox, what the `screenshot` tool refuses, and how a
screenshot reaches each provider (real SDK clients against the fake model servers).

The whole path (a page served by a background job, captured by Chromium inside the sandbox,
kept as an artifact and served by the API) runs in `tests/app/test_artifacts.py`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.base import ExecResult, Limits, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.anthropic_messages import AnthropicModel
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage, ImagePart, ToolCallRecord, accepts_images
from tests.fakes.llm import ScriptBook
from tests.images.conftest import fake_internet  # noqa: F401 (a fixture)
from tests.workers.agentkit import fake_image
from workers.agent.hooks import Hooks
from workers.agent.screenshot import png_size
from workers.agent.tools import TOOLS, ToolContext, ToolOutput, call_tool
from workers.config import AgentConfig
from workers.events import Author, Event

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="background jobs under bubblewrap need bwrap and a root host",
)


def tiny_png(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    """A valid RGB PNG of one colour."""
    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


class _NoControl:
    """These tests never reach the control plane; any call is a failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _ctx(sandbox: Any, events: list[Event], egress: Sequence[str] = ()) -> ToolContext:
    async def emit(event: Event) -> None:
        events.append(event)

    return ToolContext(
        session_id="s1",
        sandbox=sandbox,
        control=_NoControl(),  # type: ignore[arg-type]
        author=AUTHOR,
        repo=RepoSpec(name="proj", url="/tmp/proj", egress=list(egress)),
        config=AgentConfig(),
        publish=emit,
    )


async def _call(ctx: ToolContext, name: str, **arguments: Any) -> ToolOutput:
    return await call_tool(ctx, TOOLS[name], arguments, Hooks())


@pytest.fixture(params=["bwrap", "gvisor"])
async def bwrap_ctx(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ToolContext]:
    """A tool context on a real sandbox: bubblewrap (its network shared on the first job)
    or gVisor (whose commands share the container's network)."""
    from images.sandboxes.bwrap import BwrapBackend
    from images.sandboxes.environment import default_owner
    from images.sandboxes.gvisor import GvisorBackend
    from tests.images.conftest import build_image, unavailable

    if (why := unavailable(request.param)) is not None:
        pytest.skip(why)
    kind = BwrapBackend if request.param == "bwrap" else GvisorBackend
    backend = kind(tmp_path / "state", default_owner())
    image = build_image(tmp_path, backend, {"index.html": "<h1>hello from the app</h1>\n"})
    sandbox = await backend.start(SandboxSpec(image, Limits(exec_timeout_s=60, disk_mb=0)))
    try:
        yield _ctx(sandbox, [])
    finally:
        await sandbox.terminate()
    assert not sandbox.dir.exists()  # with the sandbox went its shared network's mount


@pytest.mark.slow
@needs_bwrap
async def test_a_background_server_is_reached_by_later_commands_until_stopped(
    bwrap_ctx: ToolContext,
) -> None:
    ctx = bwrap_ctx
    started = await _call(
        ctx, "run", command="exec python3 -m http.server 8123 --bind 127.0.0.1", background=True
    )
    assert not started.is_error, started.text
    assert "job1" in started.text and "job_output" in started.text
    fetched = ""
    for _ in range(50):  # the server takes a moment to listen
        got = await _call(ctx, "run", command="curl -fsS http://127.0.0.1:8123/index.html")
        if got.exit_code == 0:
            fetched = got.text
            break
        await asyncio.sleep(0.1)
    assert "hello from the app" in fetched
    output = await _call(ctx, "job_output", job_id="job1")
    assert "(running)" in output.text and '"GET /index.html HTTP/1.1" 200' in output.text
    stopped = await _call(ctx, "job_stop", job_id="job1")
    assert "(stopped)" in stopped.text
    after = await _call(ctx, "run", command="curl -sS http://127.0.0.1:8123/ ; echo code=$?")
    assert "code=7" in after.text  # connection refused: the server is gone
    unknown = await _call(ctx, "job_output", job_id="job9")
    assert unknown.is_error and "no background job 'job9'" in unknown.text


@pytest.mark.slow
@needs_bwrap
async def test_a_background_job_that_fails_at_once_says_so(bwrap_ctx: ToolContext) -> None:
    out = await _call(bwrap_ctx, "run", command="echo no such thing >&2; exit 3", background=True)
    assert out.is_error
    assert "exited with code 3" in out.text and "no such thing" in out.text


@pytest.mark.slow
@needs_bwrap
async def test_the_sandbox_limits_and_lifetime_hold_background_jobs(bwrap_ctx: ToolContext) -> None:
    out = await _call(bwrap_ctx, "run", command="sleep 30", background=True, timeout_s=1)
    assert not out.is_error
    await asyncio.sleep(2.5)
    state = await _call(bwrap_ctx, "job_output", job_id="job1")
    assert "killed (timeout)" in state.text
    await _call(bwrap_ctx, "run", command="sleep 30", background=True)
    sandbox = bwrap_ctx.sandbox
    await sandbox.terminate()  # ends the job with the sandbox (the fixture checks the rest)
    from workers.agent.background import jobs_of

    assert all(j.task.done() for j in jobs_of(sandbox).jobs.values())


async def test_screenshot_refuses_what_the_sandbox_cannot_reach(tmp_path: Path) -> None:
    sandbox = await FakeBackend().start(SandboxSpec(source=fake_image(tmp_path)))
    ctx = _ctx(sandbox, [], egress=["docs.example.com"])
    refusals = {
        "file:///etc/passwd": "only http:// and https://",
        "javascript:alert(1)": "only http:// and https://",
        "http://example.com/": "example.com is out of the sandbox's reach",
        "http://10.0.0.1:8080/": "10.0.0.1 is out of the sandbox's reach",
        "http://user:pw@127.0.0.1:8000/": "credentials are refused",
        "http://127.0.0.1:99999/": "not a valid URL",
    }
    for url, reason in refusals.items():
        out = await _call(ctx, "screenshot", url=url)
        assert out.is_error and reason in out.text, (url, out.text)
    too_big = await _call(ctx, "screenshot", url="http://127.0.0.1:8000/", width=5000)
    assert too_big.is_error and "width" in too_big.text
    assert sandbox.commands == []  # nothing ran for a refused call


async def test_screenshot_checks_what_the_browser_returned(tmp_path: Path) -> None:
    def not_a_png(sb: FakeSandbox, argv: Sequence[str], cwd: str) -> ExecResult:
        return ExecResult(0, base64.b64encode(b"<html>not an image</html>").decode(), "", 1)

    sandbox = await FakeBackend(not_a_png).start(SandboxSpec(source=fake_image(tmp_path)))
    ctx = _ctx(sandbox, [], egress=["docs.example.com"])
    out = await _call(ctx, "screenshot", url="https://docs.example.com/guide")
    assert out.is_error and "not a PNG" in out.text
    assert sandbox.commands[0][:2] == ["bash", "-c"]
    assert "https://docs.example.com/guide" in sandbox.commands[0]
    assert png_size(tiny_png(7, 5)) == (7, 5)


# ---------------------------------------------------------------- the image, per provider


def _conversation(note: str) -> list[ChatMessage]:
    image = ImagePart(data=base64.b64encode(tiny_png()).decode(), note=note)
    return [
        ChatMessage(role="user", text="shoot the home page"),
        ChatMessage(
            role="assistant",
            tool_calls=[
                ToolCallRecord(id="c1", name="screenshot", arguments={"url": "http://127.0.0.1/"}),
                ToolCallRecord(id="c2", name="run", arguments={"command": "true"}),
            ],
        ),
        ChatMessage(role="tool", tool_call_id="c1", text="captured", images=[image]),
        ChatMessage(role="tool", tool_call_id="c2", text="exit code 0"),
    ]


async def _drain(model: Any, messages: list[ChatMessage]) -> None:
    async for _ in model.stream("system", messages, []):
        pass
    await model.aclose()


async def test_openai_gets_the_image_in_a_user_message_after_the_tool_results(
    openai_fake: ScriptBook,
) -> None:
    url = openai_fake.url  # type: ignore[attr-defined]
    note = "[screenshot: /api/sessions/s1/artifacts/abc]"
    seeing = OpenAIChatModel("gpt-4o", api_key="sk-test", base_url=url)
    await _drain(seeing, _conversation(note))
    messages = openai_fake.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[3]["content"] == "captured"
    parts = messages[5]["content"]
    expected = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    assert parts[1] == {"type": "image_url", "image_url": {"url": expected}}
    assert "c1" in parts[0]["text"]

    blind = OpenAIChatModel("fake-model", api_key="sk-test", base_url=url)
    await _drain(blind, _conversation(note))
    messages = openai_fake.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert messages[3]["content"] == f"captured\n{note}"
    assert "image_url" not in str(messages)


async def test_anthropic_gets_the_image_inside_the_tool_result(
    anthropic_fake: ScriptBook,
) -> None:
    url = anthropic_fake.url  # type: ignore[attr-defined]
    note = "[screenshot: /api/sessions/s1/artifacts/abc]"
    seeing = AnthropicModel("claude-sonnet-4-5", api_key="sk-ant-test", base_url=url)
    await _drain(seeing, _conversation(note))
    result = anthropic_fake.requests[-1]["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "c1"
    assert result["content"][0] == {"type": "text", "text": "captured"}
    assert result["content"][1] == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(tiny_png()).decode(),
        },
    }
    blind = AnthropicModel("claude-sonnet-4-5", api_key="k", base_url=url, images=False)
    await _drain(blind, _conversation(note))
    result = anthropic_fake.requests[-1]["messages"][2]["content"][0]
    assert result["content"] == f"captured\n{note}"


def test_which_models_are_sent_images_and_images_are_never_stored() -> None:
    assert accepts_images("openai", "gpt-4o-mini") and accepts_images("anthropic", "claude-3-5")
    assert not accepts_images("openai", "fake-model") and not accepts_images("scripted", "echo")
    assert accepts_images("openai", "my-local-llava", override=True)
    message = _conversation("note")[2]
    assert "images" not in message.model_dump() and "iVBOR" not in message.model_dump_json()


def test_a_repo_names_its_pages_with_the_command_that_serves_them() -> None:
    from images.spec import RepoSpec, SpecFileError
    from images.spec_file import parse_spec_file

    good = parse_spec_file(
        'serve = "npm run dev"\nserve_port = 3000\n'
        'screenshots = [{path = "/", name = "home"}, {path = "/docs?x=1", name = "docs"}]\n'
    )
    spec = RepoSpec(name="web", url="/tmp/web").with_file(good)
    assert (spec.serve, spec.serve_port) == ("npm run dev", 3000)
    assert [(p.path, p.name) for p in spec.screenshots] == [("/", "home"), ("/docs?x=1", "docs")]
    refused = {
        'screenshots = [{path = "/", name = "home"}]': "need serve",
        'serve = "x"\nserve_port = 80\nscreenshots = [{path = "//evil.example", name = "h"}]': (
            "starting with one /"
        ),
        'serve = "x"\nserve_port = 80\nscreenshots = [{path = "/", name = "../up"}]': "letters",
        'serve = "x"\nserve_port = 70000\nscreenshots = []': "serve_port",
        'serve = "x"\nserve_port = 80\nscreenshots = [{path = "/", name = "a"}, {name = "a"}]': (
            "distinct"
        ),
    }
    for text, reason in refused.items():
        with pytest.raises(SpecFileError, match=reason):
            parse_spec_file(text)


@pytest.mark.slow
@needs_bwrap
async def test_background_jobs_keep_the_egress_allowlist_on_bubblewrap(
    tmp_path: Path,
    fake_internet: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    from images.sandboxes.bwrap import BwrapBackend
    from images.sandboxes.environment import default_owner
    from tests.images.conftest import build_image

    backend = BwrapBackend(tmp_path / "state", default_owner(), egress=fake_internet.proxy())
    image = build_image(tmp_path, backend, {"index.html": "<h1>served</h1>\n"})
    limits = Limits(exec_timeout_s=60, disk_mb=0)
    sandbox = await backend.start(SandboxSpec(image, limits, egress=["pypi.org"]))
    try:
        ctx = _ctx(sandbox, [], egress=["pypi.org"])
        started = await _call(
            ctx, "run", command="exec python3 -m http.server 8124 --bind 127.0.0.1", background=True
        )
        assert not started.is_error, started.text
        wait = "for i in $(seq 50); do curl -fs http://127.0.0.1:8124/ && break; sleep 0.1; done"
        local = await _call(ctx, "run", command=wait)
        assert "served" in local.text
        allowed = await _call(ctx, "run", command="curl -fsS http://pypi.org/simple/")
        assert "hello from pypi.org/simple/" in allowed.text
        refused = await _call(ctx, "run", command="curl -fsS http://not-allowed.example.com/")
        assert refused.exit_code != 0
        assert "egress proxy refused not-allowed.example.com:80" in refused.text
    finally:
        await sandbox.terminate()


def test_only_the_newest_screenshots_are_resent_older_ones_become_their_links() -> None:
    from integrations.llm.anthropic_messages import _to_anthropic
    from integrations.llm.openai_chat import _to_openai

    data = base64.b64encode(tiny_png()).decode()
    messages = [ChatMessage(role="user", text="look four times")]
    for n in range(4):
        call = ToolCallRecord(id=f"c{n}", name="screenshot", arguments={})
        image = ImagePart(data=data, note=f"[shot {n}]")
        messages += [
            ChatMessage(role="assistant", tool_calls=[call]),
            ChatMessage(role="tool", tool_call_id=f"c{n}", text=f"captured {n}", images=[image]),
        ]
    sent = _to_openai("system", messages, images=True)
    parts = [p for m in sent if isinstance(m["content"], list) for p in m["content"]]
    assert [p["type"] for p in parts].count("image_url") == 3
    assert sent[3] == {"role": "tool", "tool_call_id": "c0", "content": "captured 0\n[shot 0]"}
    blocks = _to_anthropic(messages, images=True)
    assert blocks[2]["content"][0]["content"] == "captured 0\n[shot 0]"
    assert [b["type"] for b in blocks[-1]["content"][0]["content"]] == ["text", "image"]
