"""Credentials never reach logs or events, whatever shape they come in."""

from __future__ import annotations

import io
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


@pytest.mark.parametrize(
    "text",
    [
        "ghp_" + "a" * 36,
        "gho_" + "B" * 36,
        "ns_" + "c" * 32,
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----",
        "redis://:hunter2-password@cache:6379/0",
    ],
)
def test_every_pattern_is_looked_for(text: str) -> None:
    """Each shape is redacted inside ordinary text: the quick test that skips the patterns
    for text holding none of their fixed parts must know every pattern's."""
    out = Redactor().text(f"before {text} after")
    assert "[redacted]" in out and out.startswith("before ") and out.endswith(" after")
    assert text not in out


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


def _access_log(redactor: Redactor) -> tuple[logging.Logger, io.StringIO]:
    """uvicorn's access logger with its own AccessFormatter, writing to a buffer."""
    from uvicorn.logging import AccessFormatter

    install_log_redaction(redactor)
    logger = logging.getLogger("uvicorn.access.test-redact")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    logger.handlers = [handler]
    return logger, buffer


def test_uvicorn_access_log_keeps_working_when_a_url_carries_a_token() -> None:
    redactor = Redactor(["opaque-stream-secret"])
    logger, buffer = _access_log(redactor)
    token = "ns_" + "T" * 43
    path = f"/api/sessions/abc/events/stream?token={token}&after=3"
    # Exactly how uvicorn's httptools/h11 protocols log a request.
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5123", "GET", path, "1.1", 200)
    logger.info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5123", "GET", "/x?k=opaque-stream-secret", "1.1", 404
    )
    lines = buffer.getvalue().splitlines()
    assert lines == [
        '127.0.0.1:5123 - "GET /api/sessions/abc/events/stream?token=[redacted]&after=3 HTTP/1.1" 200 OK',
        '127.0.0.1:5123 - "GET /x?k=[redacted] HTTP/1.1" 404 Not Found',
    ]


def test_arguments_keep_their_types_and_objects_holding_secrets_are_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redactor = Redactor(["opaque-object-secret"])
    install_log_redaction(redactor)
    with caplog.at_level(logging.INFO):
        logging.getLogger("nightshift.test").info(
            "%d tries, %.1f s: %s (%r)",
            3,
            1.5,
            ValueError("bad opaque-object-secret"),
            {"k": "opaque-object-secret"},
        )
        logging.getLogger("nightshift.test").info(
            "%(who)s used %(what)s", {"who": "x", "what": "opaque-object-secret"}
        )
    record, by_name = caplog.records[-2], caplog.records[-1]
    assert isinstance(record.args, tuple) and len(record.args) == 4 and record.args[0] == 3
    assert record.getMessage() == """3 tries, 1.5 s: bad [redacted] ("{'k': '[redacted]'}")"""
    assert by_name.getMessage() == "x used [redacted]"
    assert "opaque-object-secret" not in caplog.text
