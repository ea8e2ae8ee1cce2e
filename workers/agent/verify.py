"""Verified work: the repository's `verify` commands run when the agent calls `finish`.

On failure the agent gets their output and continues, up to `NIGHTSHIFT_VERIFY_ATTEMPTS`; after
the last failed attempt the work is still proposed, as a draft saying so. A command that hangs
is killed at the sandbox's exec timeout and counts as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from images.sandboxes.base import SandboxError
from workers.agent.tools import ToolContext
from workers.events import VerifyCheck, VerifyRan

OUTPUT_TAIL = 4000
"""Characters of each failing command's output shown to the model and kept in the event."""


@dataclass
class Verification:
    attempts: int = 0
    checks: list[VerifyCheck] | None = None

    @property
    def passed(self) -> bool:
        return self.checks is None or all(c.ok for c in self.checks)

    def report(self) -> str:
        """The verify section of the PR body (Markdown), or "" when nothing was verified."""
        if self.checks is None:
            return ""
        rows = "\n".join(
            f"| `{c.command}` | {'passed' if c.ok else f'failed (exit {c.exit_code})'} |"
            for c in self.checks
        )
        return f"### Verify (attempt {self.attempts})\n\n| command | result |\n|---|---|\n{rows}"


async def run_checks(ctx: ToolContext, state: Verification) -> VerifyRan:
    """Run every verify command once (in order, all of them) and record the attempt."""
    state.attempts += 1
    checks: list[VerifyCheck] = []
    for command in ctx.repo.verify:
        try:
            result = await ctx.sandbox.exec(["bash", "-c", command], cwd=".")
        except SandboxError as exc:
            checks.append(VerifyCheck(command=command, ok=False, exit_code=-1, output=str(exc)))
            continue
        output = (result.stdout + result.stderr)[-OUTPUT_TAIL:]
        if result.timed_out or result.ended_by:
            output += f"\n(killed: {result.ended_by or 'timeout'})"
        ok = result.exit_code == 0 and not result.timed_out and not result.ended_by
        checks.append(
            VerifyCheck(command=command, ok=ok, exit_code=result.exit_code, output=output)
        )
    state.checks = checks
    return VerifyRan(
        round=state.attempts,
        max_rounds=ctx.config.verify_attempts,
        passed=state.passed,
        checks=checks,
    )


def failure_text(ran: VerifyRan) -> str:
    """What the model reads when its `finish` was turned back."""
    failed = [c for c in ran.checks if not c.ok]
    parts = [
        f"Not finished: {len(failed)} of the repository's verify commands failed "
        f"(attempt {ran.round} of {ran.max_rounds}). Fix the problems, then call "
        "`finish` again."
    ]
    for c in failed:
        parts.append(f"$ {c.command}\nexit code {c.exit_code}\n{c.output}")
    return "\n\n".join(parts)
