"""The CLI as a client of a real `nightshift serve` subprocess: run, attach, prompt, stop,
login, a stream that survives a server restart, and the error lines.

The server runs on a free port with its own data dir, bubblewrap sandboxes and the scripted
model (in this process); the CLI runs as a user runs it, a subprocess with its own config dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import BIN, _terminate, free_port
from tests.factories import make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn
from tests.fakes.server import BackgroundServer

CLI_TIMEOUT = 120
pytestmark = pytest.mark.timeout(400)
PERSON = ("--name", "Dee Dev", "--email", "dee@example.com")


class Served:
    """`nightshift serve` on a free port; stop and start again on the same port and data dir."""

    def __init__(self, root: Path, model_url: str, repo_root: Path, **env: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        self.env.update(
            NIGHTSHIFT_DATA_DIR=str(root / "server-data"),
            NIGHTSHIFT_MODEL="openai:fake",
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="sk-test-client-0123456789abcdef",
            NIGHTSHIFT_REPO_ROOTS=str(repo_root),
            NIGHTSHIFT_IDLE_SECONDS="0",
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Served:
        # The child holds its own copy of the descriptor: ours is closed once it has started.
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "nightshift"), "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        wait_for(self._up, 60, "nightshift serve to answer")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.root / "server.log").read_text())
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """A crash: the server goes without any clean-up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)

    def token(self) -> str:
        """A new API token for a person, made on the server's data dir as an operator does."""
        made = subprocess.run(
            [str(BIN / "nightshift"), "tokens", "create", *PERSON],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=True,
        )
        return made.stdout.strip()


class User:
    """The CLI as one person runs it: their own config dir, the server in NIGHTSHIFT_SERVER."""

    def __init__(self, root: Path, server: str | None) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        self.env.update(XDG_CONFIG_HOME=str(root / "config"), COLUMNS="200", NO_COLOR="1")
        if server:
            self.env["NIGHTSHIFT_SERVER"] = server

    def popen(self, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BIN / "nightshift"), *args],
            env=self.env,
            cwd=self.root,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "nightshift"), *args],
            env=self.env,
            cwd=self.root,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    _openai_server: tuple[BackgroundServer, list[ScriptBook]],
) -> Iterator[Served]:
    """One token-auth server for the module; each test scripts the model afresh."""
    root = tmp_path_factory.mktemp("served")
    # Each test makes its repositories in its own temporary directory.
    server = Served(root, _openai_server[0].url + "/v1", tmp_path_factory.getbasetemp()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token(served: Served) -> str:
    return served.token()


@pytest.fixture
def dee(served: Served, token: str, tmp_path: Path) -> User:
    """A person who has logged in to the module's server."""
    user = User(tmp_path, served.url)
    logged = user.run("login", "--token", token)
    assert logged.returncode == 0, logged.stderr
    return user


def _api(served: Served, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _start_session(served: Served, token: str, repo: Path, prompt: str) -> str:
    with _api(served, token) as api:
        added = api.post("/api/repos", json={"url": str(repo)})
        assert added.status_code in (201, 409), added.text
        made = api.post("/api/sessions", json={"repo": repo.name, "prompt": prompt})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def _server_events(served: Served, token: str, session_id: str) -> list[dict[str, Any]]:
    with _api(served, token) as api:
        return list(api.get(f"/api/sessions/{session_id}/events").json())


def _json_events(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("type") != "session"]


def test_run_streams_to_the_end_and_links_to_the_server(
    served: Served, dee: User, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "client-run")
    openai_fake.script(
        "NOTES",
        Turn.tool("write_file", "Writing notes.", path="NOTES.md", content="# Notes\n"),
        Turn.tool("finish", summary="Added notes.", title="Add NOTES.md"),
    )
    result = dee.run("run", "-r", str(repo), "add NOTES please")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "registered repo client-run" in out
    assert "Writing notes." in out and "write_file NOTES.md" in out
    assert "as Dee Dev <dee@example.com>" in out  # the token's person, not the local git user
    pr = next(line for line in out.splitlines() if line.startswith("pull request "))
    assert pr.split()[-1].startswith(served.url + "/")  # the server's own port, not 8000
    session_id = next(line.split()[1] for line in out.splitlines() if line.startswith("session "))
    assert f"{served.url}/sessions/{session_id}" in out
    shown = dee.run("sessions", "show", session_id)
    assert shown.returncode == 0 and '"status": "finished"' in shown.stdout
    listed = dee.run("sessions", "list", "--repo", "client-run")
    assert listed.returncode == 0 and session_id in listed.stdout and "finished" in listed.stdout
    # `nightshift stats` prints the server's own figures, which count this session.
    as_json = dee.run("stats", "--json", "--days", "7")
    assert as_json.returncode == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert figures["window_days"] == 7 and figures["sessions"] >= 1
    text = dee.run("stats")
    assert text.returncode == 0, text.stderr
    assert f"of {figures['sessions']} sessions in the last 30 days" in text.stdout
    assert "How the pull requests fared on GitHub" in text.stdout and "approval rate" in text.stdout
    assert "follow-ups per PR" in text.stdout and "agent's share of base lines" in text.stdout


def test_attach_mid_run_sees_the_rest_once_and_ctrl_c_detaches(
    served: Served, dee: User, token: str, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    gate = threading.Event()
    openai_fake.script(
        "ATTACH",
        Turn.tool("list_files", "Looking first.", path="."),
        Turn("All done now.", [Call("finish", {"summary": "Looked."})], gate=gate),
    )
    session_id = _start_session(served, token, make_repo(tmp_path, "attach-me"), "ATTACH here")
    wait_for(
        lambda: any(e["type"] == "tool_result" for e in _server_events(served, token, session_id)),
        60,
        "the first tool call",
    )
    # Ctrl-C without a terminal: detach, say how to come back, leave the session running.
    early = dee.popen("attach", session_id)
    assert early.stdout is not None
    wait_for(lambda: "Looking first." in early.stdout.readline(), 60, "the history")
    early.send_signal(signal.SIGINT)
    _, stderr = early.communicate(timeout=30)
    assert early.returncode == 130, stderr
    assert f"Re-attach with: nightshift attach {session_id}" in stderr
    with _api(served, token) as api:
        assert api.get(f"/api/sessions/{session_id}").json()["status"] == "running"

    follower = dee.popen("attach", session_id, "--json")
    assert follower.stdout is not None
    first = follower.stdout.readline()  # attached while the model still thinks
    gate.set()
    stdout = first + follower.stdout.read()  # to the end: the follower stops by itself
    _, stderr = follower.communicate(timeout=CLI_TIMEOUT)
    assert follower.returncode == 0, stderr
    seen = [e["id"] for e in _json_events(stdout)]
    stored = [e["id"] for e in _server_events(served, token, session_id)]
    assert seen == stored  # everything, in order, once
    assert {"type": "status", "status": "finished"}.items() <= _json_events(stdout)[-1].items()


def test_prompt_follows_up_and_stop_stops(
    served: Served, dee: User, token: str, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    openai_fake.script("FIRST", Turn.tool("finish", "First one.", summary="First."))
    openai_fake.script("SECOND", Turn.tool("finish", "Second answer here.", summary="Second."))
    repo = make_repo(tmp_path, "follow-up")
    first = dee.run("run", "-r", str(repo), "FIRST thing")
    assert first.returncode == 0, first.stderr
    session_id = next(
        line.split()[1] for line in first.stdout.splitlines() if "session " in line[:8]
    )
    follow = dee.run("prompt", session_id, "SECOND thing")
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "queued prompt" in follow.stderr
    assert "Second answer here." in follow.stdout and "First one." not in follow.stdout

    gate = threading.Event()
    openai_fake.script("THIRD", Turn(text="Thinking forever.", gate=gate))
    asked = len(openai_fake.requests)
    queued = dee.run("prompt", session_id, "THIRD thing", "--detach")
    assert queued.returncode == 0 and queued.stdout == "", queued.stdout + queued.stderr
    wait_for(lambda: len(openai_fake.requests) > asked, 60, "the third prompt to reach the model")
    stopped = dee.run("stop", session_id)
    assert stopped.returncode == 0, stopped.stderr
    assert f"session {session_id}: stopped" in stopped.stdout
    gate.set()
    with _api(served, token) as api:
        assert api.get(f"/api/sessions/{session_id}").json()["status"] == "stopped"

    # On a terminal, Ctrl-C asks; answering "stop" stops the session.
    fourth = threading.Event()
    openai_fake.script("FOURTH", Turn(text="Thinking again.", gate=fourth))
    asked = len(openai_fake.requests)
    assert dee.run("prompt", session_id, "FOURTH thing", "--detach").returncode == 0
    wait_for(lambda: len(openai_fake.requests) > asked, 60, "the fourth prompt to reach the model")
    main, side = pty.openpty()
    try:
        asking = dee.popen("attach", session_id, stdin=side)
        assert asking.stdout is not None
        wait_for(lambda: "stopped" in asking.stdout.readline(), 60, "the history")
        asking.send_signal(signal.SIGINT)
        os.write(main, b"stop\n")  # the answer waits in the terminal until it is asked
        _, stderr = asking.communicate(timeout=CLI_TIMEOUT)
    finally:
        os.close(main)
        os.close(side)
        fourth.set()
    assert asking.returncode == 130 and f"stopped session {session_id}" in stderr, stderr
    with _api(served, token) as api:
        wait_for(
            lambda: api.get(f"/api/sessions/{session_id}").json()["status"] == "stopped",
            30,
            "the session to stop",
        )


def test_model_is_sent_only_when_named(served: Served, dee: User, tmp_path: Path) -> None:
    """`--model` goes into the POST body; this server checks the name it got (or, without model
    choice, refuses the field): either way one error line naming the model."""
    result = dee.run("run", "-r", str(make_repo(tmp_path, "models")), "x", "--model", "nope-9")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "model" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_login_keeps_a_checked_token_in_a_private_file(
    served: Served, token: str, tmp_path: Path
) -> None:
    user = User(tmp_path, served.url)
    before = user.run("sessions", "list")
    assert before.returncode == 1 and before.stderr.startswith("error: authentication required")
    assert "nightshift login" in before.stderr and "Traceback" not in before.stderr

    refused = user.run("login", "--token", "ns_not-a-real-token")
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "refused the token" in refused.stderr
    path = tmp_path / "config" / "nightshift" / "credentials.json"
    assert not path.exists()

    logged = user.run("login", stdin=token + "\n")  # no terminal: the token comes on stdin
    assert logged.returncode == 0, logged.stderr
    assert "as dee (Dee Dev <dee@example.com>)" in logged.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["servers"][served.url]["token"] == token
    after = user.run("sessions", "list")
    assert after.returncode == 0 and "sessions" in after.stdout


def test_errors_are_one_line_from_the_server(served: Served, dee: User, tmp_path: Path) -> None:
    unknown = dee.run("sessions", "show", "nosuchsession")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("error: ") and unknown.stderr.strip().count("\n") == 0
    assert "nosuchsession" in unknown.stderr
    for args in (["attach", "nosuchsession"], ["stop", "nosuchsession"]):
        result = dee.run(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    no_repo = dee.run("run", "-r", "no-such-repo", "x")
    assert no_repo.returncode == 1 and "unknown repo 'no-such-repo'" in no_repo.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (["run", "-r", "x", "y"], ["sessions", "list"], ["login", "--token", "ns_x"]):
        result = dee.run(*args, "--server", nowhere)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith(f"error: no Nightshift server answers at {nowhere}")
        assert result.stderr.strip().count("\n") == 0 and result.stdout == ""
    # Nothing named and nothing at the default: only `run` and `sessions` serve the data dir.
    alone = User(tmp_path, None)
    alone.env["NIGHTSHIFT_PORT"] = str(free_port())
    result = alone.run("stop", "nosuchsession")
    assert result.returncode == 1 and "start one with `nightshift serve`" in result.stderr


def _local_served(openai_fake: ScriptBook, tmp_path: Path, **env: str) -> Served:
    """A server of a test's own on `tmp_path`, local auth (no login on loopback), started."""
    url = openai_fake.url  # type: ignore[attr-defined]
    return Served(tmp_path, url, tmp_path, NIGHTSHIFT_AUTH="local", **env).start()


def test_the_stream_resumes_after_the_server_restarts(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """The server dies mid-run and comes back on its port: the attached CLI reconnects with
    `after=<last id>` and prints each later event once."""
    server = _local_served(
        openai_fake, tmp_path, NIGHTSHIFT_LEASE_TTL="1.5", NIGHTSHIFT_REAP_INTERVAL="0.5"
    )
    try:
        gate = threading.Event()
        openai_fake.script(
            "RESTART",
            Turn.tool("write_file", "Half way.", path="half.txt", content="1"),
            Turn("Made it.", [Call("finish", {"summary": "Survived."})], gate=gate),
        )
        user = User(tmp_path, server.url)  # local auth on loopback: no login needed
        repo = make_repo(tmp_path, "restart")
        follower = user.popen("run", "-r", str(repo), "RESTART now", "--json")
        log = server.root / "server.log"
        wait_for(
            lambda: openai_fake.started.is_set() and len(openai_fake.requests) >= 2,
            60,
            "the gated turn",
        )
        server.kill()
        server.start()
        wait_for(lambda: len(openai_fake.requests) >= 3, 60, "the resumed run to ask again")
        gate.set()
        stdout, stderr = follower.communicate(timeout=CLI_TIMEOUT)
        assert follower.returncode == 0, stdout + stderr + log.read_text()[-3000:]
        assert "resuming after event" in stderr
        with httpx.Client(base_url=server.url, timeout=30) as api:
            sessions = api.get("/api/sessions").json()["sessions"]
            stored = api.get(f"/api/sessions/{sessions[0]['id']}/events").json()
        assert all(line.startswith("{") for line in stdout.splitlines())  # notes: stderr
        assert "registered repo restart" in stderr
        assert [e["id"] for e in _json_events(stdout)] == [e["id"] for e in stored]
        final = json.loads(stdout.splitlines()[-1])["session"]
        assert final["status"] == "finished" and final["pr_url"].startswith(server.url + "/")
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def test_a_busy_server_sheds_the_run_and_the_cli_sends_it_again(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """A server taking in one prompt at a time, with no wait for a slot: while one creation is
    taken in (its body still on the way), the CLI's `run` is shed; the CLI says so on stderr,
    sends it again once the slot frees, and the session is created once and runs to its end."""
    server = _local_served(
        openai_fake,
        tmp_path,
        NIGHTSHIFT_MAX_PENDING_CREATES="1",
        NIGHTSHIFT_MAX_PENDING_WAIT_MS="0",
    )
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        openai_fake.script("HELD", Turn.tool("finish", "Held one.", summary="Held."))
        openai_fake.script("BUSY", Turn.tool("finish", "Sent again.", summary="Busy."))
        repo = make_repo(tmp_path, "busy")
        api = httpx.Client(base_url=server.url, timeout=60)
        assert api.post("/api/repos", json={"url": str(repo)}).status_code == 201
        # A creation whose body is slow to come holds the one slot until it has all come.
        body = json.dumps({"repo": "busy", "prompt": "HELD now"}).encode()
        head = (
            f"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        holder.sendall(head.encode() + body[:5])
        wait_for(
            lambda: "nightshift_prompts_taking_in 1.0" in api.get("/metrics").text,
            30,
            "the held creation",
        )
        follower = User(tmp_path, server.url).popen("run", "-r", "busy", "BUSY now")
        assert follower.stderr is not None and follower.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(follower.stderr.readline, "")))
        reader.start()
        try:
            wait_for(lambda: any("server is busy" in line for line in lines), 60, "a shed run")
        except AssertionError as exc:
            log = (server.root / "server.log").read_text()[-3000:]
            raise AssertionError(f"{exc}\nCLI: {''.join(lines)}\nserver: {log}") from None
        holder.sendall(body[5:])
        with holder.makefile("rb") as answer:
            assert answer.readline().startswith(b"HTTP/1.1 201")
        stdout = follower.stdout.read()
        follower.wait(CLI_TIMEOUT)
        reader.join(10)
        follower.stdout.close()
        follower.stderr.close()
        assert follower.returncode == 0, stdout + "".join(lines)
        assert "Sent again." in stdout
        busy = [line for line in lines if "server is busy" in line]
        assert busy and all("sending again in" in line for line in busy)
        titles = sorted(s["title"] for s in api.get("/api/sessions").json()["sessions"])
        assert titles == ["BUSY now", "HELD now"]
        api.close()
    finally:
        holder.close()
        with contextlib.suppress(Exception):
            server.stop()
