"""View-only for the desktop: the client's half of an RFB (VNC) conversation, with every message
that would reach the sandbox's keyboard, mouse, clipboard or screen size taken out.

The filter runs in the API, outside the sandbox, so a view-only viewer stays view-only whatever
the sandbox's VNC server was told. It knows the messages noVNC sends (RFC 6143 and the common
extensions); anything else ends the connection rather than pass unread.
"""

from __future__ import annotations

import struct

from app.errors import AppError

VERSIONS = (b"RFB 003.008\n", b"RFB 003.007\n")
SECURITY_NONE = 1
MAX_CUT_TEXT = 1 << 20
MAX_ENCODINGS = 64

# type: (fixed length, forwarded). Variable-length ones are sized in `_length`.
SET_PIXEL_FORMAT, SET_ENCODINGS, UPDATE_REQUEST = 0, 2, 3
KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT = 4, 5, 6
CONTINUOUS_UPDATES, CLIENT_FENCE, XVP, SET_DESKTOP_SIZE, QEMU = 150, 248, 250, 251, 255
FORWARDED = frozenset({SET_PIXEL_FORMAT, SET_ENCODINGS, UPDATE_REQUEST, CONTINUOUS_UPDATES,
                       CLIENT_FENCE})  # fmt: skip
DROPPED = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, XVP, SET_DESKTOP_SIZE, QEMU})


class ProtocolError(AppError):
    """The client sent something the view-only filter does not know; the connection ends."""


class ViewOnly:
    """Feed it the client's bytes as they come; it returns the bytes that may go on."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._stage = "version"
        self.dropped = 0
        """Input messages taken out so far."""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while True:
            taken = self._step()
            if taken is None:
                return bytes(out)
            out += taken

    def _step(self) -> bytes | None:
        """The next whole unit's bytes to forward (b"" when dropped), or None until more come."""
        buf = self._buf
        if self._stage == "version":
            if len(buf) < 12:
                return None
            if bytes(buf[:12]) not in VERSIONS:
                raise ProtocolError(f"unsupported RFB version {bytes(buf[:12])!r}")
            self._stage = "security"
            return self._take(12)
        if self._stage == "security":
            if not buf:
                return None
            if buf[0] != SECURITY_NONE:
                raise ProtocolError(f"security type {buf[0]} is not offered here")
            self._stage = "init"
            return self._take(1)
        if self._stage == "init":
            if not buf:
                return None
            self._take(1)
            self._stage = "messages"
            return b"\x01"  # shared: a viewer never disconnects the others
        if not buf:
            return None
        length = self._length(buf)
        if length is None or len(buf) < length:
            return None
        kind = buf[0]
        chunk = self._take(length)
        _check(chunk)
        if kind in DROPPED:
            self.dropped += 1
            return b""
        return chunk

    def _length(self, buf: bytearray) -> int | None:
        """The whole message's length, None until enough of its header is here."""
        kind = buf[0]
        fixed = {SET_PIXEL_FORMAT: 20, UPDATE_REQUEST: 10, KEY_EVENT: 8, POINTER_EVENT: 6,
                 CONTINUOUS_UPDATES: 10, XVP: 4}  # fmt: skip
        if kind in fixed:
            return fixed[kind]
        if kind == SET_ENCODINGS:
            return None if len(buf) < 4 else 4 + 4 * int(struct.unpack_from(">H", buf, 2)[0])
        if kind == CLIENT_CUT_TEXT:
            if len(buf) < 8:
                return None
            # Extended clipboard sends a negative length; its size is the absolute value.
            size: int = abs(struct.unpack_from(">i", buf, 4)[0])
            if size > MAX_CUT_TEXT:
                raise ProtocolError(f"clipboard text of {size} bytes is over the limit")
            return 8 + size
        if kind == CLIENT_FENCE:
            return None if len(buf) < 9 else 9 + buf[8]
        if kind == SET_DESKTOP_SIZE:
            return None if len(buf) < 8 else 8 + 16 * buf[6]
        if kind == QEMU:
            if len(buf) < 2:
                return None
            if buf[1] == 0:  # extended key event
                return 12
            raise ProtocolError(f"QEMU client message {buf[1]} is not known here")
        raise ProtocolError(f"client message type {kind} is not known here")

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        return chunk


def _check(message: bytes) -> None:
    """Refuse forwarded messages whose fields no real client sends: a watcher's bytes reach the
    VNC server's parser, and only well-formed ones should."""
    kind = message[0]
    if kind == SET_PIXEL_FORMAT:
        bpp, depth, _big, true_colour = message[4:8]
        if bpp not in (8, 16, 32) or not 0 < depth <= bpp or true_colour > 1:
            raise ProtocolError(f"pixel format of {bpp} bits, depth {depth} is not valid")
    elif kind == SET_ENCODINGS and (len(message) - 4) // 4 > MAX_ENCODINGS:
        raise ProtocolError(f"more than {MAX_ENCODINGS} encodings")
    elif kind == CLIENT_FENCE and message[8] > 64:
        raise ProtocolError("a fence payload is at most 64 bytes")
