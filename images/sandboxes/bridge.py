"""Inside a sandbox: forward a loopback TCP port to the egress proxy's unix socket.

A sandbox's network namespace holds only `lo`, while programs expect an HTTP proxy at
`127.0.0.1:PORT`. This script (run by the sandbox's own /usr/bin/python3, standard library
only) listens there and carries every connection, byte for byte, to the proxy socket that is
bound into the sandbox. The proxy on the host decides what may pass.

    bridge.py PORT SOCKET [--ready FILE]   serve until killed (one bridge per sandbox);
                                           FILE is created once the port listens
    bridge.py PORT SOCKET -- CMD...        serve for the life of CMD, then exit with its status

The listening socket is bound before CMD starts, so CMD never races the bridge.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RD)


def _handle(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_handle, args=(client, path), daemon=True).start()


def _exit_like(status: int) -> None:
    """Leave with the child's status, re-raising its fatal signal so callers see 128+N."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.stderr.write("usage: bridge.py PORT SOCKET [-- CMD...]\n")
        sys.exit(2)
    port, path, command = int(argv[0]), argv[1], argv[3:] if argv[2:3] == ["--"] else []
    ready = argv[3] if argv[2:3] == ["--ready"] and len(argv) > 3 else None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        sys.stderr.write(f"nightshift egress bridge: cannot listen on 127.0.0.1:{port}: {exc}\n")
        sys.exit(125)
    listener.listen(128)
    if not command:
        if ready:
            with open(ready, "w") as marker:
                marker.write(f"{os.getpid()}\n")
        _serve(listener, path)
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        try:
            os.execvp(command[0], command)  # noqa: S606
        except OSError as exc:
            sys.stderr.write(f"{command[0]}: {exc.strerror}\n")
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    threading.Thread(target=_serve, args=(listener, path), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: os.kill(pid, n))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
