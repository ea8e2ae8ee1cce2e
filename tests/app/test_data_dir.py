"""The data dir holds sandboxes' files, owned by the sandbox uid: no other local user may
reach into it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from app.wiring import resolved


def test_the_data_dir_is_private_whether_new_or_existing(
    make_settings: Any, tmp_path: Path
) -> None:
    fresh = resolved(make_settings(data_dir=tmp_path / "new" / "data")).data_dir
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    existing = tmp_path / "old"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    resolved(make_settings(data_dir=existing))
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700
