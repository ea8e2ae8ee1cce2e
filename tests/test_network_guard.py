"""The suite's guard: no test may reach anything but loopback."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import NetworkBlocked


def test_non_loopback_connections_are_refused() -> None:
    with (
        pytest.raises(NetworkBlocked, match="only loopback"),
        socket.create_connection(("192.0.2.1", 443), timeout=1),
    ):
        pass
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("api.openai.com", 443)
    with pytest.raises((NetworkBlocked, httpx.ConnectError)):
        httpx.get("https://api.github.com/", timeout=1)


def test_loopback_is_allowed() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
