"""Fixtures for the distributed tests: one cluster (Redis, PostgreSQL, API and two Celery
workers as processes) shared by the tests of a run, healed before each test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.cluster import Cluster
from tests.fakes.llm import ScriptBook
from tests.fakes.server import BackgroundServer


@pytest.fixture(scope="session")
def cluster_database() -> Iterator[str]:
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"ns_cluster_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _cluster(
    tmp_path_factory: pytest.TempPathFactory,
    cluster_database: str,
    _openai_server: tuple[BackgroundServer, list[ScriptBook]],
    git_identity: None,
) -> Iterator[Cluster]:
    server, _ = _openai_server
    cluster = Cluster(
        tmp_path_factory.mktemp("cluster"),
        cluster_database,
        {
            "NIGHTSHIFT_MODEL": "openai:fake-model",
            "OPENAI_BASE_URL": server.url + "/v1",
            "OPENAI_API_KEY": "sk-test-fake-key-0123456789abcdef",
        },
    )
    try:
        cluster.redis.start()
        cluster.start_api()
        cluster.start_worker("w1", "w2")
    except Exception:
        cluster.close()
        raise
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(_cluster: Cluster, openai_fake: ScriptBook) -> Iterator[Cluster]:
    """The running cluster, healed, with a fresh model script book."""
    _cluster.ensure()
    yield _cluster


def cluster_logs(cluster: Cluster) -> str:
    return "\n".join(f"--- {n}\n{cluster.log_text(n)}" for n in ("api", *cluster.workers))
