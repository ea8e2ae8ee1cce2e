"""The agent loop and its tools on the in-memory fake sandbox, with the scripted model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from images.sandboxes.base import ExecResult, ImageRef, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.base import ModelTransientError
from integrations.llm.scripted import ScriptedModel
from integrations.llm.types import ChatMessage
from tests.workers.agentkit import fake_image
from workers.agent.hooks import Hooks, redact_output
from workers.agent.loop import run_agent
from workers.agent.tools import FinishArgs, Finished, ToolContext, finish
from workers.config import AgentConfig
from workers.events import Author, Event
from workers.redact import Redactor

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")


class _UnusedControl:
    """These tests never reach the control plane; any call is a failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _echo_handler(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    command = argv[-1]
    if command.startswith("echo "):
        return ExecResult(0, command[5:] + "\n", "", 1)
    return ExecResult(2, "", f"unknown command {command}", 1)


def _run(
    tmp_path: Path,
    turns: list[dict[str, Any]],
    config: AgentConfig | None = None,
    hooks: Hooks | None = None,
    model: Any = None,
) -> tuple[Any, list[Event], FakeSandbox]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"turns": turns}))
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> Any:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_echo_handler).start(SandboxSpec(source=image))
        sandbox.files["README.md"] = b"# proj\nhello\nhello\n"
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),  # type: ignore[arg-type]
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj"),
            config=config or AgentConfig(),
            publish=emit,
            prompt_id=1,
            attempt=2,
        )
        result = await run_agent(
            ctx,
            model or ScriptedModel(str(script)),
            hooks or Hooks(),
            [],
            ChatMessage(role="user", text="go"),
            0.0,
        )
        return result, sandbox

    result, sandbox = asyncio.run(go())
    return result, events, sandbox


def test_tools_act_on_the_sandbox_and_finish_ends_the_run(tmp_path: Path) -> None:
    result, events, sandbox = _run(
        tmp_path,
        [
            {
                "text": "reading",
                "tool_calls": [{"name": "read_file", "arguments": {"path": "README.md"}}],
            },
            {
                "tool_calls": [
                    {
                        "name": "edit_file",
                        "arguments": {
                            "path": "README.md",
                            "old_text": "# proj",
                            "new_text": "# Project",
                        },
                    },
                    {"name": "write_file", "arguments": {"path": "docs/a.md", "content": "A"}},
                    {"name": "run", "arguments": {"command": "echo hi"}},
                ]
            },
            {
                "tool_calls": [
                    {"name": "finish", "arguments": {"summary": "did it", "title": "Do it"}},
                    {"name": "run", "arguments": {"command": "echo never"}},
                ]
            },
        ],
    )
    assert (result.outcome, result.summary, result.title, result.steps) == (
        "done",
        "did it",
        "Do it",
        3,
    )
    assert sandbox.files["README.md"].startswith(b"# Project\n")
    assert sandbox.files["docs/a.md"] == b"A"
    outputs = [(e.name, e.output, e.is_error) for e in events if e.type == "tool_result"]  # type: ignore[union-attr]
    assert outputs[0] == ("read_file", "# proj\nhello\nhello\n", False)
    assert outputs[3] == ("run", "exit code 0\nstdout:\nhi\n", False)
    assert outputs[5][0] == "run" and outputs[5][2] and "finish" in outputs[5][1]
    assert [c for c in sandbox.commands] == [
        ["bash", "-c", "echo hi"]
    ]  # the call after finish never ran
    types = [e.type for e in events]
    assert types[:2] == ["message", "model_request"] and "text_delta" in types and "usage" in types
    # The tool context stamps every event with its prompt and run attempt.
    assert {(e.prompt_id, e.attempt) for e in events} == {(1, 2)}


def test_finish_hands_back_a_typed_result() -> None:
    out = asyncio.run(finish(None, FinishArgs(summary="did it")))  # type: ignore[arg-type]
    assert out.finished == Finished(summary="did it", title="")
    assert not out.is_error


def test_bad_tool_calls_become_errors_the_model_sees(tmp_path: Path) -> None:
    result, events, sandbox = _run(
        tmp_path,
        [
            {
                "tool_calls": [
                    {"name": "teleport", "arguments": {}},
                    {"name": "write_file", "arguments": {"path": "x"}},
                    {
                        "name": "edit_file",
                        "arguments": {"path": "README.md", "old_text": "hello", "new_text": "bye"},
                    },
                    {"name": "read_file", "arguments": {"path": "../outside"}},
                    {"name": "read_file", "arguments": {"path": "missing.txt"}},
                    {"name": "run", "arguments": {"command": "false-command"}},
                ]
            },
            {"text": "I give up.", "tool_calls": []},
        ],
    )
    assert result.outcome == "done" and result.summary == "I give up."
    errors = [e.output for e in events if e.type == "tool_result"]  # type: ignore[union-attr]
    assert "unknown tool 'teleport'" in errors[0]
    assert "content: Field required" in errors[1]
    assert "occurs 2 times" in errors[2]
    assert "escapes the workspace" in errors[3]
    assert "no such file" in errors[4]
    assert errors[5].startswith("exit code 2")
    assert sandbox.files["README.md"] == b"# proj\nhello\nhello\n"  # nothing changed
    assert "x" not in sandbox.files


def test_step_limit_and_token_budget_stop_the_run(tmp_path: Path) -> None:
    looping = [{"tool_calls": [{"name": "list_files", "arguments": {}}]}] * 50
    result, events, _ = _run(tmp_path, looping, AgentConfig(max_steps=3))
    assert result.outcome == "limit" and result.steps == 3
    assert [e.code for e in events if e.type == "error"] == ["step_limit"]  # type: ignore[union-attr]
    result, events, _ = _run(tmp_path, looping, AgentConfig(token_budget=1000))
    assert result.outcome == "limit"
    assert [e.code for e in events if e.type == "error"] == ["token_budget"]  # type: ignore[union-attr]


def test_after_tool_hook_redacts_secrets_before_the_model_sees_them(tmp_path: Path) -> None:
    hooks = Hooks(after_tool=[redact_output(Redactor(["hunter2-hunter2"]))])
    _, events, _ = _run(
        tmp_path,
        [
            {
                "tool_calls": [
                    {
                        "name": "run",
                        "arguments": {"command": "echo hunter2-hunter2 xoxb-1234567890-abcdefghij"},
                    }
                ]
            },
            {"text": "ok"},
        ],
        hooks=hooks,
    )
    output = next(e.output for e in events if e.type == "tool_result")  # type: ignore[union-attr]
    assert "hunter2" not in output and "xoxb-" not in output and output.count("[redacted]") == 2


class _FlakyModel:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def aclose(self) -> None:
        return None

    async def stream(self, system: str, messages: list[ChatMessage], tools: Any):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise ModelTransientError("429 from model endpoint", retry_after=0.0)
        from integrations.llm.types import Completion

        yield Completion(ChatMessage(role="assistant", text="fine"))


def test_transient_model_errors_are_retried_then_give_up(tmp_path: Path) -> None:
    result, events, _ = _run(tmp_path, [], AgentConfig(model_retries=2), model=_FlakyModel(2))
    assert result.outcome == "done"
    assert [e.retry for e in events if e.type == "model_retry"] == [1, 2]  # type: ignore[union-attr]
    result, events, _ = _run(tmp_path, [], AgentConfig(model_retries=2), model=_FlakyModel(5))
    assert result.outcome == "failed"
    assert [e.code for e in events if e.type == "error"] == ["model_error"]  # type: ignore[union-attr]


class _StallingModel:
    """Sends a little text at once, then goes quiet for a while before finishing; with
    `more`, a second piece of text comes shortly after the first."""

    name = "stalling"

    def __init__(self, more: bool = False) -> None:
        self.more = more

    async def aclose(self) -> None:
        return None

    async def stream(self, system: str, messages: list[ChatMessage], tools: Any):  # type: ignore[no-untyped-def]
        from integrations.llm.types import Completion, TextChunk

        yield TextChunk("Thinking")
        if self.more:
            await asyncio.sleep(0.07)  # the first text's flush is on its way (slow emit)
            yield TextChunk(" harder")
        await asyncio.sleep(0.4)
        yield Completion(ChatMessage(role="assistant", text="Thinking"))


def _stamped_run(tmp_path: Path, model: Any, emit_s: float = 0.0) -> list[tuple[Event, float]]:
    """Run the agent on `model`; each event with when it was emitted (after `emit_s`)."""
    stamps: list[tuple[Event, float]] = []

    async def go() -> None:
        image = ImageRef(
            id="img",
            repo="proj",
            sha="0" * 40,
            backend="fake",
            location=str(tmp_path),
            runtime="fake-1",
            built_at=0,
        )
        sandbox = await FakeBackend().start(SandboxSpec(source=image))
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def emit(event: Event) -> None:
            await asyncio.sleep(emit_s)
            stamps.append((event, loop.time() - started))

        ctx = ToolContext(
            session_id="s",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,  # type: ignore[arg-type]
            repo=RepoSpec(name="p", url="/tmp/p"),
            config=AgentConfig(),
            publish=emit,
        )
        await run_agent(ctx, model, Hooks(), [], ChatMessage(role="user", text="go"), 0.0)

    asyncio.run(go())
    return stamps


def test_text_is_flushed_while_the_model_pauses(tmp_path: Path) -> None:
    stamps = _stamped_run(tmp_path, _StallingModel())
    delta_at = next(t for event, t in stamps if event.type == "text_delta")
    done_at = next(t for event, t in stamps if event.type == "usage")
    assert delta_at < 0.3 and done_at >= 0.4  # the text went out before the model resumed


def test_text_arriving_while_a_flush_is_sent_goes_out_before_the_model_resumes(
    tmp_path: Path,
) -> None:
    stamps = _stamped_run(tmp_path, _StallingModel(more=True), emit_s=0.05)
    deltas = [(event, t) for event, t in stamps if event.type == "text_delta"]
    assert "".join(event.text for event, _ in deltas) == "Thinking harder"  # type: ignore[attr-defined]
    done_at = next(t for event, t in stamps if event.type == "usage")
    assert deltas[-1][1] < 0.35 and done_at >= 0.45
