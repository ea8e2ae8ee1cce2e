"""infra/ holds deployments only; these checks catch one drifting from the code: a command or
option that no longer exists, a Modal call the installed client lacks, Redis losing its AOF."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from app.cli import app

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _nightshift_commands() -> list[list[str]]:
    """Every `nightshift ...` invocation in compose and the systemd units."""
    found = []
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for service in compose["services"].values():
        command = service.get("command")
        if command and command[0] == "nightshift":
            found.append([str(part) for part in command[1:]])
    for unit in (INFRA / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
                assert argv[0].endswith("/nightshift"), line
                found.append(argv[1:])
    return found


def test_every_deployed_command_exists_with_its_options() -> None:
    commands = _nightshift_commands()
    assert {c[0] for c in commands} >= {"serve", "worker", "beat", "db"}
    runner = CliRunner()
    for argv in commands:
        words = [a for a in argv if not a.startswith("-")][:2]
        path = words[:2] if words[0] == "db" else words[:1]
        help_text = runner.invoke(app, [*path, "--help"], terminal_width=200).output
        assert "Usage" in help_text, (argv, help_text)
        for option in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert option in help_text, f"{' '.join(argv)}: {option} is not an option"


def test_compose_runs_redis_durably_and_one_api_and_beat() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    redis_args = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_args and "--maxmemory-policy noeviction" in redis_args
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("api", "beat"):
        assert "replicas" not in services[name].get("deploy", {})
    env = compose["x-nightshift"]["environment"]
    assert env["NIGHTSHIFT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["NIGHTSHIFT_BROKER_URL"].startswith("redis://")
    example = (INFRA / "nightshift.env.example").read_text()
    assert re.search(r"^NIGHTSHIFT_WORKER_TOKEN=", example, re.M)


def test_the_modal_deployment_declares_workers_with_the_installed_client() -> None:
    spec = importlib.util.spec_from_file_location(
        "nightshift_modal", INFRA / "modal" / "nightshift_modal.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the App and Function objects offline
    import modal

    assert module.app.name == "nightshift-workers"
    assert isinstance(module.worker, modal.Function)


def test_infra_holds_no_python_logic_but_the_modal_declaration() -> None:
    python = [p.relative_to(INFRA) for p in INFRA.rglob("*.py")]
    assert python == [Path("modal/nightshift_modal.py")]
