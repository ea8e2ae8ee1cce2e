"""The host opens a sandbox's VNC socket without following anything the sandbox placed: a
symlink at any step, or a file that is not a socket, is refused rather than connected to."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.sandboxes.desktop import SOCKET_DIR, SOCKET_NAME, open_socket


@pytest.fixture
def host_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A listening socket of the host's, which a sandbox would love to reach."""
    path = tmp_path / "host" / "private.sock"
    path.parent.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    yield path, server
    server.close()


def _sandbox_tmp(tmp_path: Path) -> Path:
    # Deeper than a sockaddr_un path may be: the connection goes through /proc/self/fd.
    tmp = tmp_path / ("d" * 60) / ("e" * 60) / "tmp"
    tmp.mkdir(parents=True)
    return tmp


def test_the_desktop_socket_is_reached_even_under_a_long_path(tmp_path: Path) -> None:
    tmp = _sandbox_tmp(tmp_path)
    (tmp / SOCKET_DIR).mkdir()
    path = tmp / SOCKET_DIR / SOCKET_NAME
    assert len(str(path)) > 108
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(path.parent)  # bind by a short name: the full path is too long for sun_path
    try:
        server.bind(SOCKET_NAME)
    finally:
        os.chdir(cwd)
    server.listen(1)
    try:
        client = open_socket(tmp)
        peer, _ = server.accept()
        client.sendall(b"RFB 003.008\n")
        assert peer.recv(12) == b"RFB 003.008\n"
        client.close()
        peer.close()
    finally:
        server.close()


def test_a_symlinked_socket_or_directory_is_refused(
    tmp_path: Path, host_socket: tuple[Path, socket.socket]
) -> None:
    target, server = host_socket
    tmp = _sandbox_tmp(tmp_path)
    (tmp / SOCKET_DIR).mkdir()
    (tmp / SOCKET_DIR / SOCKET_NAME).symlink_to(target)
    with pytest.raises(OSError):
        open_socket(tmp)

    swapped = _sandbox_tmp(tmp_path / "other")
    (swapped / SOCKET_DIR).symlink_to(target.parent)
    os.link(target, target.parent / SOCKET_NAME)  # the host's socket under the expected name
    with pytest.raises(OSError):
        open_socket(swapped)

    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody reached the host's socket


def test_a_file_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    tmp = _sandbox_tmp(tmp_path)
    (tmp / SOCKET_DIR).mkdir()
    (tmp / SOCKET_DIR / SOCKET_NAME).write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        open_socket(tmp)
    with pytest.raises(FileNotFoundError):
        open_socket(tmp_path / "nothing-here")
