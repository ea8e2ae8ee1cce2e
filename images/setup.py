"""Running a repo's set-up and warm commands in a sandbox, and keeping their output out of
the agent's commits. Used by image builds and by cold starts (set-up in the session's own
sandbox while no image exists)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from images.ansi import strip_ansi
from images.errors import ImagesError
from images.sandboxes.base import ExecResult, ImageRef, Limits, Sandbox, SandboxError, SandboxSpec
from images.spec import RepoSpec

LOG_CAP = 256 * 1024
COMMAND_TAIL = 16 * 1024
Progress = Callable[[str], None]


class BuildError(ImagesError):
    """A build step failed; the message says which and why."""


@dataclass
class BuildLog:
    parts: list[str] = field(default_factory=list)
    size: int = 0

    def line(self, text: str) -> None:
        text = strip_ansi(text)
        self.parts.append(text.rstrip("\n") + "\n")
        self.size += len(text) + 1

    def command(self, command: str, result: ExecResult) -> None:
        self.line(f"$ {command}")
        for stream in (result.stdout, result.stderr):
            if stream:
                tail = stream[-COMMAND_TAIL:]
                if len(stream) > len(tail):
                    self.line(f"[... {len(stream) - len(tail)} earlier characters omitted]")
                self.line(tail)
        note = " (wall-clock timeout)" if result.timed_out else ""
        self.line(f"→ exit {result.exit_code}{note} in {result.duration_ms} ms")

    def text(self) -> str:
        out = "".join(self.parts)
        if len(out) > LOG_CAP:
            out = "[... log truncated]\n" + out[-LOG_CAP:]
        return out


async def run_commands(
    sandbox: Sandbox,
    spec: RepoSpec,
    phases: tuple[str, ...],
    timeout: float,
    build_log: BuildLog,
    progress: Progress | None = None,
) -> None:
    """Run the spec's commands of `phases` (setup, warm) in order; stop at the first failure."""
    for phase in phases:
        commands: list[str] = getattr(spec, phase)
        for index, command in enumerate(commands, 1):
            if progress is not None:
                progress(f"{phase} {index}/{len(commands)}: {command}")
            seen = len(sandbox.egress_refusals())
            result = await sandbox.exec(
                ["bash", "-c", command], timeout=timeout, output_cap=4 * COMMAND_TAIL
            )
            build_log.command(command, result)
            refused = sandbox.egress_refusals()[seen:]
            for line in refused:
                build_log.line(f"egress refused {line}")
                if progress is not None:
                    progress(f"egress refused {line}")
            if not result.ok:
                why = "timed out" if result.timed_out else f"exited {result.exit_code}"
                last = strip_ansi(result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
                cause = f"egress refused {refused[-1]}" if refused else last[0][:300]
                raise BuildError(
                    f"{phase} command `{command}` {why}" + (f": {cause}" if cause else "")
                )


def _exclude_pattern(path: str) -> str:
    """A `.git/info/exclude` line matching exactly `path` (relative to the repository root)."""
    escaped = "".join("\\" + c if c in "\\*?[]!# " else c for c in path)
    return "/" + escaped


async def exclude_setup_output(sandbox: Sandbox) -> list[str]:
    """Keep what set-up created (a virtualenv, `node_modules`, build output) out of the
    agent's commits: untracked paths go to `.git/info/exclude`. Git runs in the sandbox."""
    listed = await sandbox.exec(
        ["git", "ls-files", "-z", "--others", "--exclude-standard", "--directory"],
        timeout=300,
        output_cap=4 * 1024 * 1024,
    )
    if not listed.ok or listed.truncated:
        return []
    paths = [p for p in listed.stdout.split("\0") if p]
    if not paths:
        return []
    try:
        current = (await sandbox.read_file(".git/info/exclude")).decode(errors="replace")
    except SandboxError:
        current = ""
    lines = [current.rstrip("\n"), "# set-up output (Nightshift image build)"]
    lines += [_exclude_pattern(p.rstrip("/")) for p in paths]
    await sandbox.write_file(".git/info/exclude", ("\n".join(lines).lstrip("\n") + "\n").encode())
    return paths


def build_sandbox_spec(
    spec: RepoSpec, source: ImageRef, limits: Limits, command_timeout: float
) -> SandboxSpec:
    """The sandbox a build runs the repository's set-up in, on any backend."""
    return SandboxSpec(
        source=source,
        limits=replace(limits, exec_timeout_s=command_timeout),
        env=spec.env,
        egress=spec.egress,
        label=f"build:{spec.name}",
    )


async def run_setup(
    sandbox: Sandbox, spec: RepoSpec, command_timeout: float, build_log: BuildLog, say: Progress
) -> None:
    """Set-up and warm commands in a build sandbox, their output kept out of commits."""
    await run_commands(sandbox, spec, ("setup", "warm"), command_timeout, build_log, say)
    excluded = await exclude_setup_output(sandbox)
    if excluded:
        build_log.line(f"kept out of commits (.git/info/exclude): {', '.join(excluded)}")
