"""Property-based run over the server's own OpenAPI schema: every operation, with valid and
invalid generated inputs (and once more against a real session and repo), must answer below
500, and every 4xx must carry a message.

A 5xx here fails the build: bad input gets a clear 4xx and changes nothing. Each 500 this run
found has a named regression test of its own (tests/app/test_api.py, test_repo_access.py).

Schemathesis builds the Hypothesis strategies; the loop is ours, because its pytest plugin's
lazy `from_fixture` schemas do not run under pytest 9 (`Function._nodeid` is gone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.factories import make_person, make_repo

# Streams never end on their own; their handshakes and errors are covered by the stream tests
# (tests/app/test_event_streams.py, tests/web/test_web_api.py). WebSockets are not in the schema.
STREAMING = ("/api/sessions/changes", "/api/sessions/{session_id}/events/stream")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
"""Per operation and generation mode: ~35 operations x 3 runs stay well under a minute."""


@dataclass
class Target:
    schema: Any
    token: str
    known: dict[str, str]
    """Path parameters that name things that exist, to reach past the 404s."""


@pytest.fixture
def target(make_settings: Any, slack_fake: Any, tmp_path: Path) -> Iterator[Target]:
    from app.main import create_app
    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET

    # Slack and GitHub webhooks configured, so their handlers are reached, not a "not set" 503.
    runtime = build_runtime(
        make_settings(
            sandbox="fake",
            image_interval=0,
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SIGNING_SECRET,
            slack_api_url=slack_fake.url,
            github_webhook_secret="fuzz-webhook-secret",
        )
    )
    runtime.start()
    person = make_person(runtime, "fuzz", "Fuzz Tester", "fuzz@example.com")
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path / "repos", "proj"))))
    session = runtime.sessions.create(person.user, "proj", "hello", source="api")
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime=runtime))
    known = {"session_id": session.id, "repo": "proj", "number": "1", "client_id": "c1"}
    yield Target(schema.exclude(path=list(STREAMING)), person.token, known)
    runtime.close()


def _check(case: Any, token: str) -> None:
    where = f"{case.method} {case.formatted_path}"
    try:
        response = case.call(headers={"Authorization": f"Bearer {token}"})
    except Exception as exc:  # the in-process client re-raises what a server answers 500 to
        raise AssertionError(
            f"{where} raised {type(exc).__name__}: {exc}\n{case.as_curl_command()}"
        ) from exc
    assert response.status_code < 500, (
        f"{where} answered {response.status_code}: {response.text[:1000]}\n{case.as_curl_command()}"
    )
    if 400 <= response.status_code < 500 and response.status_code != 405:
        assert response.content.strip(), f"{where}: a {response.status_code} with no message"


def test_no_input_reaches_a_server_error(target: Target) -> None:
    started = time.monotonic()
    failures: list[str] = []
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) > 30, "the schema lost its operations"
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        runs = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if names:
            runs.append(
                (GenerationMode.POSITIVE, {n: target.known[n] for n in names if n in target.known})
            )
        for mode, path_parameters in runs:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                _check(case, target.token)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid: the operation takes no input at all.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except AssertionError as exc:
                failures.append(f"[{mode.value}] {exc}")
    assert not failures, "\n\n".join(failures)
    if EXAMPLES <= 15:
        assert time.monotonic() - started < 60
