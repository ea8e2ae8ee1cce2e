"""A stand-in for code-server, run inside a real sandbox by the IDE tests: it takes code-server's
command line (`--socket PATH ... WORKSPACE`), serves HTTP and WebSockets on that Unix socket,
and shows what reached it. Standard library only: the sandbox runs it with the system python3.

- `GET /` a page; `GET /headers[/...]` the request's path (as sent) and headers as JSON;
- `POST /write?path=NAME` writes the body to NAME in the workspace (an edit in the IDE);
- `GET /set-cookies` answers with two cookies, one of them named like the proxy's own;
- WebSocket `/ws`: first sends the handshake's headers as JSON, then echoes every message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socketserver
import struct
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _args(argv: list[str]) -> tuple[str, Path]:
    sock, workspace, i = "", Path("."), 0
    while i < len(argv):
        if argv[i] == "--socket":
            sock, i = argv[i + 1], i + 2
            continue
        if not argv[i].startswith("--"):
            workspace = Path(argv[i])
        elif argv[i] in ("--auth", "--user-data-dir", "--extensions-dir"):
            i += 1
        i += 1
    return sock, workspace


SOCKET, WORKSPACE = _args(sys.argv[1:])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def _send(self, status: int, body: bytes, kind: str, extra: list[tuple[str, str]]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        if url.path.startswith("/headers"):
            seen = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
            self._send(200, json.dumps(seen).encode(), "application/json", [])
        elif url.path == "/set-cookies":
            cookies = [
                ("Set-Cookie", "nightshift_ide=forged; Path=/"),
                ("Set-Cookie", "standin_pref=dark; Path=/"),
            ]
            self._send(200, b"cookies", "text/plain", cookies)
        elif url.path == "/":
            page = b"<!doctype html><title>stand-in workbench</title><p id=ok>workbench</p>"
            self._send(200, page, "text/html", [])
        else:
            self._send(404, b"not here", "text/plain", [])

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path != "/write":
            self._send(404, b"not here", "text/plain", [])
            return
        name = parse_qs(url.query)["path"][0]
        (WORKSPACE / name).write_bytes(body)
        self._send(200, f"wrote {name}".encode(), "text/plain", [])

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + MAGIC).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        seen = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
        self._frame(1, json.dumps(seen).encode())
        while True:
            opcode, data = self._read_frame()
            if opcode == 8 or opcode < 0:
                self._frame(8, data[:2])
                return
            if opcode == 9:
                self._frame(10, data)
            elif opcode in (1, 2):
                self._frame(opcode, (b"echo:" if opcode == 1 else b"") + data)

    def _frame(self, opcode: int, data: bytes) -> None:
        head = bytes([0x80 | opcode])
        if len(data) < 126:
            head += bytes([len(data)])
        elif len(data) < 65536:
            head += bytes([126]) + struct.pack(">H", len(data))
        else:
            head += bytes([127]) + struct.pack(">Q", len(data))
        self.wfile.write(head + data)
        self.wfile.flush()

    def _read_frame(self) -> tuple[int, bytes]:
        head = self.rfile.read(2)
        if len(head) < 2:
            return -1, b""
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(length)
        return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    if os.path.exists(SOCKET):
        os.unlink(SOCKET)
    with Server(SOCKET, Handler) as server:
        server.serve_forever()
