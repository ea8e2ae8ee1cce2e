"""What every sandbox backend guarantees, run against each one available here (bubblewrap,
gVisor, the fake; Modal with NIGHTSHIFT_LIVE_MODAL=1). The fake runs no commands, so the
tests that need one skip for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.base import (
    FileTooLarge,
    Limits,
    PathEscape,
    SandboxError,
    SandboxFileError,
    SnapshotUnusable,
    UnsupportedSetting,
)
from tests.conftest import LIVE_MODAL
from tests.images.conftest import PUBLIC, FakeInternet, Starter

pytestmark = pytest.mark.slow
LOCAL = ("bwrap", "gvisor")
FIFO_READS = 70


def socket_at(path: str) -> str:
    return f"python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"{path}\")'"


# Takes a write lease on README.md and ignores the kernel's request to give it back.
LEASE_HOLDER = """
import fcntl, os, signal, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open("README.md", os.O_RDONLY)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)
open("leased", "w").close()
time.sleep(25)
"""


@pytest.fixture
def runs_commands(backend_name: str) -> None:
    if backend_name == "fake":
        pytest.skip("the fake backend runs no commands")


@pytest.fixture
def local_only(backend_name: str) -> None:
    if backend_name not in LOCAL:
        pytest.skip("a property of sandboxes on this host")


def py(code: str) -> list[str]:
    return ["python3", "-c", code]


# ---------------------------------------------------------------- nothing of the host


@pytest.mark.usefixtures("runs_commands", "local_only")
async def test_host_secret_files_are_not_readable(
    start: Starter, state_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "server.env"
    secret.write_text("OPENAI_API_KEY=sk-host-secret\n")
    (state_dir / "control.db").write_text("control db")
    sandbox = await start()
    for path in (
        str(secret),
        str(state_dir / "control.db"),
        "/root",
        "/etc/shadow",
        str(Path.home()),
    ):
        result = await sandbox.exec(["cat", path])
        assert result.exit_code != 0, path
        assert "sk-host-secret" not in result.stdout
    listing = await sandbox.exec(["ls", "-a", "/", "/etc", "/home"])
    assert "shadow" not in listing.stdout and "root" not in listing.stdout.split()
    seen = await sandbox.exec(["sh", "-c", f"test -e {state_dir} || echo absent"])
    assert seen.stdout.strip() == "absent"


@pytest.mark.usefixtures("runs_commands")
async def test_secret_environment_is_not_visible(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-0123456789")
    monkeypatch.setenv("NIGHTSHIFT_SECRET_KEYS", "fernet-secret")
    sandbox = await start(env={"REPO_DECLARED": "yes"})
    result = await sandbox.exec(
        ["sh", "-c", "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'"]
    )
    assert result.exit_code == 0
    assert "sk-env-secret" not in result.stdout and "fernet-secret" not in result.stdout
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert "REPO_DECLARED" in names
    assert not names & {"OPENAI_API_KEY", "NIGHTSHIFT_SECRET_KEYS", "MODAL_TOKEN_SECRET"}


@pytest.mark.usefixtures("runs_commands", "local_only")
async def test_writes_outside_the_workspace_never_reach_the_host(start: Starter) -> None:
    marker = f"escape-{os.getpid()}-{time.monotonic_ns()}"
    sandbox = await start()
    result = await sandbox.exec(
        [
            "sh",
            "-c",
            f"echo x > /tmp/{marker}; echo x > /etc/{marker}; echo x > /usr/{marker}; "
            f"echo x > /{marker}; ls /tmp",
        ]
    )
    assert marker in result.stdout  # the sandbox's own /tmp took it
    for host_path in (f"/tmp/{marker}", f"/etc/{marker}", f"/usr/{marker}", f"/{marker}"):
        assert not os.path.exists(host_path), host_path


# ---------------------------------------------------------------- network


@pytest.mark.usefixtures("runs_commands", "local_only")
async def test_host_loopback_ports_are_refused(start: Starter) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        sandbox = await start()
        result = await sandbox.exec(
            py(
                "import socket\n"
                f"try:\n socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n"
                "except OSError as e: print('refused', e)"
            )
        )
        assert result.stdout.startswith("refused"), result
    finally:
        listener.close()


@pytest.mark.usefixtures("runs_commands")
async def test_there_is_no_dns(start: Starter) -> None:
    sandbox = await start()
    result = await sandbox.exec(
        py(
            "import socket\n"
            "try:\n socket.getaddrinfo('pypi.org', 443); print('resolved')\n"
            "except OSError as e: print('no dns', e)"
        )
    )
    assert result.stdout.startswith("no dns"), result


async def test_egress_reaches_allowlisted_hosts_only(
    start: Starter, backend_name: str, fake_internet: FakeInternet
) -> None:
    if backend_name == "fake":
        with pytest.raises(UnsupportedSetting):
            await start(egress=("pypi.org",))
        return
    if backend_name == "modal":
        pytest.skip("Modal enforces the allowlist itself; the fake internet is local-only")
    sandbox = await start(egress=("pypi.org", "intranet.example.com", "sneaky.example.com"))
    script = (
        "import os, socket, urllib.request as u\n"
        "def get(url):\n"
        "    try: return u.urlopen(url, timeout=20).read().decode().strip()\n"
        "    except Exception as e: return f'refused {getattr(e, \"code\", e)}'\n"
        "def connect(target):\n"
        "    s = socket.create_connection(('127.0.0.1', 3128), timeout=20)\n"
        "    s.sendall(f'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n'.encode())\n"
        "    head = s.recv(4096).decode()\n"
        "    if ' 200 ' not in head.split('\\r\\n')[0]: return 'refused ' + head.split('\\r\\n')[0]\n"
        "    s.sendall(b'GET /simple/ HTTP/1.0\\r\\nHost: pypi.org\\r\\n\\r\\n')\n"
        "    data = b''\n"
        "    while chunk := s.recv(4096): data += chunk\n"
        "    return data.decode().splitlines()[-1]\n"
        "print(get('http://pypi.org/simple/requests/'))\n"
        "print(connect('pypi.org:443'))\n"
        "print(get('http://not-allowed.example.com/'))\n"
        "print(connect(f'{PUBLIC}:443'))\n"
        "print(get('http://intranet.example.com/'))\n"
        "print(get('http://sneaky.example.com/'))\n"
        "print(os.environ['HTTPS_PROXY'])\n"
    ).replace("{PUBLIC}", PUBLIC["pypi.org"])
    result = await sandbox.exec(py(script), timeout=120)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result
    assert lines[0] == "hello from pypi.org/simple/requests/"
    assert lines[1] == "hello from pypi.org/simple/"
    assert lines[2] == "refused 403"  # not on the allowlist
    assert lines[3].startswith("refused HTTP/1.1 403")  # an IP literal
    assert lines[4] == "refused 403" and lines[5] == "refused 403"  # private addresses
    assert lines[6] == "http://127.0.0.1:3128"
    assert all(address == PUBLIC["pypi.org"] for address, _ in fake_internet.dialled)


# ---------------------------------------------------------------- limits


def _host_responsive() -> float:
    t0 = time.monotonic()
    subprocess.run(["true"], check=True, timeout=30)
    return time.monotonic() - t0


@pytest.mark.usefixtures("runs_commands")
async def test_fork_bomb_is_contained(start: Starter, backend: Any) -> None:
    sandbox = await start(limits=Limits(pids=32, exec_timeout_s=120))
    bomb = asyncio.ensure_future(
        sandbox.exec(["bash", "-c", "b() { b | b & }; b; sleep 3; echo done"], timeout=20)
    )
    await asyncio.sleep(1.5)
    assert await asyncio.to_thread(_host_responsive) < 10  # the host still forks at once
    result = await bomb
    # 254: every pid of the sandbox stayed taken until bash gave up forking `sleep` after its
    # retries (a loaded machine); held all the same.
    assert result.exit_code in (0, 124, 254), result
    after = await sandbox.exec(["echo", "still usable"])
    assert after.stdout.strip() == "still usable"
    if backend.name == "bwrap":
        assert "pids" in result.limits_hit or result.timed_out
        cgroup = getattr(sandbox, "cgroup", None)
        await sandbox.terminate()
        if cgroup is not None and cgroup.pids is not None:
            assert not cgroup.pids.exists(), "the sandbox's pids cgroup outlived it"


@pytest.mark.usefixtures("runs_commands")
async def test_memory_past_the_limit_is_killed_with_137(start: Starter) -> None:
    sandbox = await start(limits=Limits(memory_mb=96, exec_timeout_s=120))
    result = await sandbox.exec(py("b = bytearray(400 * 1024 * 1024); print('allocated')"))
    assert result.exit_code == 137, result
    assert result.oom_killed and result.ended_by == "memory"
    assert "allocated" not in result.stdout
    again = await sandbox.exec(["cat", "README.md"])  # the sandbox carries on
    assert again.stdout == "# demo\n"


@pytest.mark.usefixtures("runs_commands")
async def test_sleeping_past_the_timeout_ends_with_124(start: Starter) -> None:
    sandbox = await start()
    t0 = time.monotonic()
    result = await sandbox.exec(["sh", "-c", "sleep 60 & sleep 60"], timeout=2)
    assert result.exit_code == 124 and result.timed_out and result.ended_by == "timeout"
    assert time.monotonic() - t0 < 30
    after = await sandbox.exec(["sh", "-c", "ps -eo comm | grep -c '^sleep' || true"])
    assert after.stdout.strip() == "0", "processes outlived their timed-out command"


@pytest.mark.usefixtures("runs_commands", "local_only")
async def test_sandbox_lifetime_ends_commands_and_refuses_more(start: Starter) -> None:
    sandbox = await start(limits=Limits(sandbox_timeout_s=4, exec_timeout_s=60))
    result = await sandbox.exec(["sleep", "30"])
    assert result.exit_code == 124 and result.ended_by == "sandbox_timeout", result
    with pytest.raises(SandboxError, match="lifetime"):
        await sandbox.exec(["true"])
    assert (await sandbox.snapshot()).id  # the work done so far can still be saved


@pytest.mark.usefixtures("runs_commands")
async def test_cpu_time_past_the_limit_ends_with_152(start: Starter) -> None:
    sandbox = await start(limits=Limits(cpu_seconds=1, exec_timeout_s=120))
    result = await sandbox.exec(py("while True: pass"))
    assert result.exit_code == 152 and result.ended_by == "cpu", result


@pytest.mark.usefixtures("runs_commands")
async def test_output_flood_is_capped(start: Starter, backend_name: str) -> None:
    if backend_name == "modal" and not LIVE_MODAL:
        pytest.skip("the fake Modal hands a command's output back when it ends, not as it flows")
    sandbox = await start()
    result = await sandbox.exec(
        ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"], output_cap=4096
    )
    assert result.exit_code == 0 and result.truncated and "output" in result.limits_hit
    assert result.stdout == "x" * 4096
    endless = await sandbox.exec(["yes"], output_cap=1024, timeout=120)
    assert endless.ended_by == "output" and endless.stdout.startswith("y\ny\n")
    assert len(endless.stdout) == 1024


# ---------------------------------------------------------------- file tools


@pytest.mark.usefixtures("runs_commands")
async def test_symlink_escapes_through_file_tools_are_refused(start: Starter) -> None:
    sandbox = await start()
    made = await sandbox.exec(
        ["sh", "-c", "ln -s /etc/passwd leak && ln -s ../.. up && mkdir d && ln -s /etc d/etc"]
    )
    assert made.exit_code == 0, made
    host_passwd = Path("/etc/passwd").read_bytes()
    for path in (
        "leak",
        "up/etc/hostname",
        "d/etc/passwd",
        "../workspace/README.md",
        "/etc/passwd",
    ):
        with pytest.raises(PathEscape):
            await sandbox.read_file(path)
    for path in ("leak", "d/etc/evil", "up/tmp/evil"):
        with pytest.raises(PathEscape):
            await sandbox.write_file(path, b"owned\n")
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert not Path("/etc/evil").exists()
    assert await sandbox.read_file("README.md") == b"# demo\n"


async def test_file_tools_round_trip(start: Starter) -> None:
    sandbox = await start()
    await sandbox.write_file("pkg/new/module.py", b"X = 1\n")
    assert await sandbox.read_file("pkg/new/module.py") == b"X = 1\n"
    names = {e.path for e in await sandbox.list_files(".", recursive=True)}
    assert {"README.md", "src/app.py", "pkg/new/module.py"} <= names
    with pytest.raises(SandboxFileError):
        await sandbox.read_file("missing.txt")


async def test_the_backend_lists_its_live_sandboxes_and_their_owner(
    start: Starter, backend: Any
) -> None:
    first, second = await start(), await start()
    assert set(backend.live) == {first.id, second.id}
    assert backend.live[first.id].source == first.source
    await first.terminate()
    assert set(backend.live) == {second.id}
    owner = backend.owner
    assert owner is None or (len(owner) == 2 and all(isinstance(i, int) for i in owner))
    assert isinstance(backend.enforcement(), dict)


@pytest.mark.usefixtures("runs_commands")
async def test_fifos_and_sockets_through_file_tools_fail_fast(
    start: Starter, backend_name: str, tmp_path: Path
) -> None:
    sandbox = await start()
    made = await sandbox.exec(
        ["sh", "-c", "mkfifo trap && ln -s trap alias && " + socket_at("sock")]
    )
    assert made.exit_code == 0, made
    calls = {
        "read trap": lambda: sandbox.read_file("trap"),
        "read alias": lambda: sandbox.read_file("alias"),
        "read sock": lambda: sandbox.read_file("sock"),
        "list trap": lambda: sandbox.list_files("trap"),
        "copy trap": lambda: sandbox.copy_out("trap", tmp_path / "out", 1024),
    }
    for what, call in calls.items():
        started = time.monotonic()
        with pytest.raises(SandboxFileError) as refused:
            await asyncio.wait_for(call(), 10)
        assert time.monotonic() - started < 5, what
        if backend_name != "gvisor":  # gVisor keeps FIFOs and sockets in its own kernel
            assert "not a" in str(refused.value), (what, refused.value)
    assert not (tmp_path / "out").exists()
    for _ in range(FIFO_READS):
        with pytest.raises(SandboxFileError):
            await asyncio.wait_for(sandbox.read_file("trap"), 10)
    for path in ("trap", "sock"):
        started = time.monotonic()
        try:
            await asyncio.wait_for(sandbox.write_file(path, b"x"), 10)
            assert backend_name == "gvisor", f"a write into {path} was let through"
        except SandboxFileError as exc:
            assert "not a regular file" in str(exc)
        assert time.monotonic() - started < 5
    listed = await asyncio.wait_for(sandbox.list_files(".", recursive=True), 10)
    assert "README.md" in {e.path for e in listed}
    assert (await sandbox.exec(["echo", "still here"])).stdout == "still here\n"
    assert await asyncio.to_thread(lambda: "the shared executor answers") != ""


@pytest.mark.usefixtures("runs_commands", "local_only")
async def test_a_lease_held_in_the_sandbox_does_not_hold_the_host(
    start: Starter, backend_name: str
) -> None:
    if backend_name == "gvisor":
        pytest.skip("gVisor keeps file leases in its own kernel")
    sandbox = await start()
    holder = asyncio.ensure_future(sandbox.exec(py(LEASE_HOLDER), timeout=30))
    for _ in range(100):
        if "leased" in [e.path for e in await sandbox.list_files(".")]:
            break
        await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(SandboxFileError, match="lease"):
        await asyncio.wait_for(sandbox.read_file("README.md"), 10)
    assert time.monotonic() - started < 5  # the kernel would wait 45 s for the holder
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError, SandboxError):
        await holder


async def test_copy_out_streams_a_file_and_keeps_to_its_cap(start: Starter, tmp_path: Path) -> None:
    sandbox = await start()
    data = os.urandom(3 * 1024 * 1024 + 17)
    await sandbox.write_file("big.bin", data)
    assert await sandbox.copy_out("big.bin", tmp_path / "copy", len(data)) == len(data)
    assert (tmp_path / "copy").read_bytes() == data
    with pytest.raises(FileTooLarge):
        await sandbox.copy_out("big.bin", tmp_path / "capped", len(data) - 1)
    assert not (tmp_path / "capped").exists()
    with pytest.raises(SandboxFileError):
        await sandbox.copy_out("missing.bin", tmp_path / "missing", 1024)


# ---------------------------------------------------------------- isolation and snapshots


async def test_writes_never_reach_the_image_or_another_sandbox(
    start: Starter, backend_name: str
) -> None:
    a = await start()
    b = await start()
    await a.write_file("README.md", b"changed by a\n")
    await a.write_file("only-a.txt", b"a\n")
    if backend_name != "fake":
        made = await a.exec(["sh", "-c", "echo x > made-by-exec && rm src/app.py"])
        assert made.exit_code == 0
    assert await b.read_file("README.md") == b"# demo\n"
    assert await b.read_file("src/app.py") == b"print('hi')\n"
    with pytest.raises(SandboxFileError):
        await b.read_file("only-a.txt")
    workspace = Path(start.image.location) / "root" / "workspace"
    if workspace.is_dir():
        assert (workspace / "README.md").read_text() == "# demo\n"
        assert (workspace / "src" / "app.py").exists()
        assert sorted(p.name for p in workspace.iterdir()) == ["README.md", "src"]


async def test_snapshot_restore_round_trip(start: Starter, backend_name: str) -> None:
    first = await start()
    await first.write_file("notes/one.txt", b"one\n")
    if backend_name != "fake":
        assert (await first.exec(["rm", "src/app.py"])).exit_code == 0
    snap1 = await first.snapshot()
    assert snap1.image.id == start.image.id and snap1.runtime == start.backend.runtime_version()
    second = await start(snap1)
    assert await second.read_file("notes/one.txt") == b"one\n"
    if backend_name != "fake":
        with pytest.raises(SandboxFileError):
            await second.read_file("src/app.py")
    await second.write_file("notes/two.txt", b"two\n")
    snap2 = await second.snapshot()
    third = await start(snap2)
    assert await third.read_file("notes/one.txt") == b"one\n"
    assert await third.read_file("notes/two.txt") == b"two\n"
    assert await first.read_file("notes/one.txt") == b"one\n"  # snapshotting keeps it running


async def test_snapshot_from_another_runtime_is_refused(start: Starter) -> None:
    sandbox = await start()
    snap = await sandbox.snapshot()
    with pytest.raises(SnapshotUnusable, match=r"start from the newest image|not "):
        await start(replace(snap, runtime="bwrap-0.1/old"))


async def test_snapshot_whose_base_image_is_gone_is_refused(
    start: Starter, backend_name: str
) -> None:
    if backend_name == "modal":
        pytest.skip("Modal snapshots hold the whole filesystem; they do not need the base")
    sandbox = await start()
    await sandbox.write_file("kept.txt", b"x\n")
    snap = await sandbox.snapshot()
    await sandbox.terminate()
    shutil.rmtree(start.image.location)
    with pytest.raises(SnapshotUnusable, match=f"base image {start.image.id} is gone"):
        await start(snap)


@pytest.mark.usefixtures("local_only")
async def test_old_snapshots_are_collected_but_not_what_others_stack_on(
    start: Starter, backend: Any
) -> None:
    a = await start()
    await a.write_file("a.txt", b"a\n")
    old = await a.snapshot()
    b = await start(old)
    await b.write_file("b.txt", b"b\n")
    kept = await b.snapshot()  # stacks on `old`
    await b.terminate()
    stray = await a.snapshot()
    removed = backend.collect_snapshots(0, keep={kept.id})
    assert removed == [stray.id]
    assert not Path(stray.location).exists()
    c = await start(kept)
    assert await c.read_file("a.txt") == b"a\n" and await c.read_file("b.txt") == b"b\n"
    backend.collect_snapshots(0)  # in use by c: kept, with what it stacks on
    assert Path(kept.location).exists() and Path(old.location).exists()
    await c.terminate()
    assert sorted(backend.collect_snapshots(0)) == sorted([old.id, kept.id])


@pytest.mark.usefixtures("runs_commands")
async def test_exec_reports_exit_codes_cwd_and_stdin(start: Starter) -> None:
    sandbox = await start()
    result = await sandbox.exec(["sh", "-c", "pwd; cat; exit 7"], cwd="src", stdin=b"piped\n")
    assert result.exit_code == 7 and result.stdout == "/workspace/src\npiped\n"
    assert result.ended_by == "" and not result.timed_out
    missing = await sandbox.exec(["no-such-command"])
    assert missing.exit_code == 127
