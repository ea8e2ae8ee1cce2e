"""Credentials never reach logs or events, whatever shape they come in."""

from __future__ import annotations

import logging

import pytest

from workers.redact import Redactor, install_log_redaction


@pytest.mark.parametrize(
    "secret",
    [
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        "ghs_123456_eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2lnbmF0dXJl-_x",
        "ghu_abcdefghijklmnopqrstuvwxyz012345",
        "ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "xoxb-1234567890-0987654321-abcdefghijklmnop",
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-api03-abcdefghijklmnopqrstuvwx",
    ],
)
def test_token_shapes_are_redacted(secret: str) -> None:
    out = Redactor().text(f"token={secret} done")
    assert secret not in out and out == "token=[redacted] done"


def test_literal_secrets_and_urls() -> None:
    redactor = Redactor(["correct-horse-battery", "short"])
    assert redactor.text("pw correct-horse-battery and short") == "pw [redacted] and short"
    assert (
        redactor.text("https://x-access-token:abc123@github.com/o/r")
        == "https://[redacted]@github.com/o/r"
    )
    assert redactor.value({"a": ["correct-horse-battery", 3]}) == {"a": ["[redacted]", 3]}


def test_literal_secrets_are_capped() -> None:
    redactor = Redactor()
    redactor.add(f"minted-token-{i:06d}" for i in range(Redactor.MAX_LITERALS + 50))
    assert redactor.text("minted-token-000000") == "minted-token-000000"  # the oldest aged out
    assert redactor.text(f"minted-token-{Redactor.MAX_LITERALS + 49:06d}") == "[redacted]"


def test_learned_tokens_leave_room_for_the_ones_no_pattern_catches() -> None:
    redactor = Redactor()
    redactor.learn("opaque-session-secret-1")
    # Minting many pattern-shaped tokens (an installation token an hour) must not age out
    # the opaque secret: shaped ones are caught without a literal entry.
    for i in range(Redactor.MAX_LITERALS + 10):
        redactor.learn(f"ghs_{i:036d}")
    assert redactor.text("x opaque-session-secret-1 y") == "x [redacted] y"
    assert redactor.text(f"ghs_{3:036d}") == "[redacted]"


def test_every_logger_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor(["s3cret-value-for-logs"])  # redaction lasts as long as its redactor
    install_log_redaction(redactor)
    with caplog.at_level(logging.INFO):
        logging.getLogger("nightshift.runner").info("pushing with %s", "s3cret-value-for-logs")
        logging.getLogger("some.library").warning(
            "token ghs_16C7e42F292c6912E7710c838347Ae178B4a leaked"
        )
    text = caplog.text
    assert "s3cret-value-for-logs" not in text and "ghs_16C7" not in text
    assert text.count("[redacted]") == 2
