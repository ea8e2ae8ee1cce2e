"""A server settles its garbage collector once started (`workers/tuning.py`): what it holds for
its whole life is frozen, and young collections are spaced out. Run in a process of its own,
as `nightshift serve` is, so the suite's own collector is left as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SERVE = """
import gc, json, sys
import app.settings
app.settings.FAKE_SANDBOX_ALLOWED = True
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings

settings = Settings(
    _env_file=None, data_dir=sys.argv[1], auth="token", sandbox="fake", allowed_hosts="testserver"
)
before = {"threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}
server = create_app(settings)
server.state.settle_heap_once_started = True  # as `nightshift serve` sets it
with TestClient(server) as client:
    assert client.get("/healthz").status_code == 200
    after = {"threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after}))
"""


def test_a_started_server_freezes_its_heap_and_spaces_out_young_collections(
    tmp_path: Path,
) -> None:
    from workers.tuning import YOUNG_THRESHOLD

    run = subprocess.run(
        [sys.executable, "-c", _SERVE, str(tmp_path / "ns")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["before"] == {"threshold": 700, "frozen": 0}
    assert seen["after"]["threshold"] == YOUNG_THRESHOLD
    # The imports, the runtime and the app: a large heap, out of the collector's sight.
    assert seen["after"]["frozen"] > 100_000
