"""Terminal escape sequences out of text that a model or a log reader sees.

Sandboxes get `NO_COLOR=1` and `TERM=dumb`, which most tools honour; `strip_ansi` removes
what the rest still print (colour codes, cursor moves, OSC titles and hyperlinks) from tool
output and build logs. Carriage-return progress bars are kept as they are.
"""

from __future__ import annotations

import re

_ANSI_RE = re.compile(
    r"""
    \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)   # OSC ... BEL or ST (titles, hyperlinks)
    | \x1b\[[0-?]*[ -/]*[@-~]           # CSI ... final byte (colours, cursor moves)
    | \x9b[0-?]*[ -/]*[@-~]             # 8-bit CSI
    | \x1b[PX^_][^\x1b]*\x1b\\          # DCS, SOS, PM, APC strings
    | \x1b[@-Z\\-_]                     # other two-byte escapes
    """,
    re.VERBOSE,
)

NO_COLOR_ENV = {"NO_COLOR": "1", "TERM": "dumb"}
"""Set in every sandbox command's environment (a spec's `env` may override them)."""


def strip_ansi(text: str) -> str:
    """`text` without terminal escape sequences."""
    if "\x1b" not in text and "\x9b" not in text:
        return text
    return _ANSI_RE.sub("", text)
