"""`nightshift stats`: does it pay off? The stats page's figures in a terminal, from a server.

A client of `GET /api/stats` (`app/commands/client.py`); no server answering at the default
URL, the local data dir is served for the command (as `sessions list` does).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from app.commands.common import console
from app.commands.remote import ServerOption, connected

NONE = "-"
"""What a measure with nothing measured yet reads as (not 0)."""


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f}%"


def _wait(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _usd(value: float) -> str:
    return f"${value:.2f}" if value >= 0.01 else f"${value:.4f}"


def _print(stats: dict[str, Any]) -> None:
    days = stats["window_days"]
    console.print(
        f"[bold]{stats['merged']}[/] of {stats['sessions']} sessions in the last {days} days "
        f"ended in a merged PR ({_pct(stats['merged_share'])}); "
        f"{stats['active_humans_5m']} humans prompting in the last 5 minutes"
    )
    latency = Table("started from", "prompts", "p50 ms", "p95 ms", title="Start latency")
    for mode, row in sorted(stats["start_latency"].items()):
        latency.add_row(mode, str(row["count"]), str(row["p50_ms"]), str(row["p95_ms"]))
    first = stats["first_model_request"]
    latency.add_row(
        "first model request", str(first["count"]), str(first["p50_ms"]), str(first["p95_ms"])
    )
    console.print(latency)
    prs = stats.get("pull_requests") or {}
    table = Table("measure", "value", title="How the pull requests fared on GitHub")
    table.add_row("PRs opened", str(prs.get("prs", 0)))
    table.add_row("PRs reviewed", str(prs.get("reviewed", 0)))
    table.add_row("approval rate", _pct(prs.get("approval_rate")))
    revisions = prs.get("revisions_per_pr")
    table.add_row("pushes per PR", NONE if revisions is None else str(revisions))
    follow_ups = prs.get("follow_ups_per_pr")
    table.add_row("follow-ups per PR", NONE if follow_ups is None else str(follow_ups))
    table.add_row("median opened → merged", _wait(prs.get("median_open_to_merge_s")))
    table.add_row("agent's share of merged commits", _pct(prs.get("agent_commit_share")))
    lines = f"{prs.get('agent_lines_added', 0)} of {prs.get('base_lines_added', 0)}"
    unmeasured = prs.get("unmeasured_commits", 0)
    if unmeasured:
        lines += f"; {unmeasured} commits not measured"
    table.add_row(
        "agent's share of base lines",
        f"{_pct(prs.get('agent_line_share'))} ({lines})",
    )
    console.print(table)
    by_repo = stats.get("pull_requests_by_repo") or []
    if by_repo:
        repos = Table(
            "repository",
            "PRs",
            "approval",
            "pushes/PR",
            "to merge",
            "agent lines",
            title="Per repo",
        )
        for row in by_repo:
            pushes = row.get("revisions_per_pr")
            repos.add_row(
                row["name"],
                str(row["prs"]),
                _pct(row.get("approval_rate")),
                NONE if pushes is None else str(pushes),
                _wait(row.get("median_open_to_merge_s")),
                _pct(row.get("agent_line_share")),
            )
        console.print(repos)
    usage = stats["usage"]
    spend = Table("who", "prompts", "input", "cached", "output", "est. cost", title="Spend")
    spend.add_row(
        "everyone",
        "",
        str(usage["input_tokens"]),
        str(usage["cached_tokens"]),
        str(usage["output_tokens"]),
        _usd(usage["cost_usd"]),
    )
    for kind, rows in (("person", stats["usage_by_person"]), ("repo", stats["usage_by_repo"])):
        for row in rows:
            spend.add_row(
                f"{kind} {row['name']}",
                str(row["prompts"]),
                str(row["input_tokens"]),
                str(row["cached_tokens"]),
                str(row["output_tokens"]),
                _usd(row["cost_usd"]),
            )
    console.print(spend)


def stats(
    days: Annotated[int, typer.Option(min=1, max=365, help="The window, in days")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON instead")] = False,
    server: ServerOption = None,
) -> None:
    """Merged PRs, start latency, how the PRs fared on GitHub and spend, over a window."""
    with connected(server, local=True) as client:
        found = client.request("GET", "/api/stats", params={"days": days})
    if as_json:
        print(json.dumps(found))
    else:
        _print(found)
