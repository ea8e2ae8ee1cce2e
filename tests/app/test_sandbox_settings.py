"""The sandbox disk quota and uid settings reach the sandbox layer, and bad values are refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError


def test_disk_quota_and_uid_reach_the_sandbox_layer(make_settings: Any) -> None:
    settings = make_settings(sandbox_disk_mb=64, sandbox_inodes=4096, sandbox_uid=70000)
    limits = settings.limits()
    assert (limits.disk_mb, limits.disk_inodes) == (64, 4096)
    assert settings.sandbox_config().sandbox_uid == 70000
    defaults = make_settings()
    assert defaults.limits().disk_mb == 10240
    assert defaults.sandbox_config().sandbox_uid == 65600


@pytest.mark.parametrize(
    ("name", "value"),
    [("sandbox_disk_mb", 8), ("sandbox_disk_mb", -1), ("sandbox_inodes", 10), ("sandbox_uid", 0)],
)
def test_bad_sandbox_settings_are_refused(make_settings: Any, name: str, value: int) -> None:
    with pytest.raises(ValidationError):
        make_settings(**{name: value})
