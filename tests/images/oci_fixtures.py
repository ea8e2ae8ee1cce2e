"""Fixtures of the declared-image tests: a real registry on 127.0.0.1 and a busybox image
with a tool the host does not have, pushed to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.registry import FakeRegistry, push_image, start_registry

ONLY_IN_IMAGE = "#!/bin/sh\necho from-image\n"
BASH = '#!/bin/sh\nexec /bin/sh "$@"\n'
"""Set-up commands run under `bash -c`; busybox has no bash applet, so the image's is sh."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRegistry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def tool_image(registry: FakeRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_image(
        registry,
        tmp_path_factory.mktemp("build"),
        "team/tools:1",
        {"/usr/bin/only-in-image": ONLY_IN_IMAGE, "/bin/bash": BASH},
        env=["PATH=/opt/tools:/usr/bin:/bin", "GREETING=hi", "HOME=/root"],
    )
