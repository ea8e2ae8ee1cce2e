"""`nightshift bench startup --model-server`: prompt → first request as an HTTP model server
sees it (the SDK client, its pool and the request's encoding included), which the scripted
model never shows."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from app.bench.model_server import ANSWER, ModelServer
from app.cli import app

pytestmark = pytest.mark.slow


def test_bench_startup_times_the_first_request_at_a_model_server() -> None:
    argv = ["bench", "startup", "--model-server", "--modes", "warm", "--sessions", "2"]
    done = CliRunner().invoke(app, [*argv, "--files", "20"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["model"] == "openai:bench-model"
    warm = report["modes"]["warm"]
    at_server = warm["first_request_at_server_ms"]
    assert len(at_server["samples"]) == 2 and all(s > 0 for s in at_server["samples"])
    # The request leaves after the worker announced it: the server's figure is the later one.
    assert at_server["p50"] >= 0
    assert report["model_server"]["targets_p50_ms"] == {"warm": 60, "image": 80}
    assert report["model_server"]["met"] == {"warm": at_server["p50"] <= 60}


def test_the_bench_model_server_answers_the_openai_sdk_streamed_and_not() -> None:
    from openai import OpenAI

    with ModelServer() as server:
        client = OpenAI(base_url=server.url, api_key="bench", http_client=httpx.Client(timeout=30))
        ask = [{"role": "user", "content": "[warm-0] nothing to do"}]
        plain = client.chat.completions.create(model="m", messages=ask)
        assert plain.choices[0].message.content == ANSWER
        stream = client.chat.completions.create(
            model="m", messages=ask, stream=True, stream_options={"include_usage": True}
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == ANSWER
        assert server.requests == 2
        first = server.first_request("[warm-0]")
        assert first is not None and server.first_request("[warm-1]") is None
