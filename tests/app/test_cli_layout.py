"""The command line's layout: `app/cli.py` registers, `app/commands/` holds the commands.

Helpers that lived in the registration module and were imported back by the command modules
made an import circle; benchmarks exited the process through the CLI's `fail`. These read the
imports of each file, so a helper moved back (or a library that exits again) is caught here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import app

APP = Path(app.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_command_module_imports_the_registration_module() -> None:
    modules = sorted((APP / "commands").glob("*.py"))
    assert modules
    offenders = [p.name for p in modules if any(n.startswith("app.cli") for n in _imports(p))]
    assert offenders == []


def test_benchmarks_raise_their_own_error_and_never_exit_through_the_cli() -> None:
    modules = sorted((APP / "bench").glob("*.py"))
    assert modules
    offenders = {
        p.name: sorted(n for n in _imports(p) if n.startswith(("app.cli", "app.commands", "typer")))
        for p in modules
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_registration_module_defines_no_command() -> None:
    tree = ast.parse((APP / "cli.py").read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["main"]


def test_loading_the_cli_loads_no_server_code() -> None:
    """`nightshift run|attach|prompt|stop|repos --server` and `--help` only talk HTTP: the
    runtime, the services, the image builder, the ORM and the GitHub client load inside the
    commands that use them (loading them all took the CLI 2 s to start on a slow core)."""
    import subprocess
    import sys

    probe = "import sys, app.cli; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    heavy = [
        "app.runtime",
        "app.services.repos",
        "app.services.sessions",
        "images.builder",
        "sqlalchemy",
        "githubkit",
        "redis",
    ]
    assert [m for m in heavy if m in loaded] == []
