"""`.nightshift.toml`: parsing, errors with line and reason, and how it completes a spec."""

from __future__ import annotations

import pytest

from images.spec import RepoSpec, SpecFile, SpecFileError
from images.spec_file import parse_spec_file


def test_full_file_parses() -> None:
    spec = parse_spec_file(
        """
# comment
setup = ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
warm = ["make test"]
egress = ["PyPI.org", "files.pythonhosted.org."]
ci_fix_attempts = 0

[env]
CI = "1"
"""
    )
    assert spec.setup == ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
    assert spec.warm == ["make test"]
    assert spec.egress == ["pypi.org", "files.pythonhosted.org"]
    assert spec.env == {"CI": "1"}
    assert spec.ci_fix_attempts == 0
    assert RepoSpec(name="p", url="/x").with_file(spec).ci_fix_attempts == 0


def test_empty_file_says_nothing() -> None:
    assert parse_spec_file("") == SpecFile()


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('setup = ["a"]\nwarm = [\n', 2, "not valid TOML"),
        ('setup = ["a"]\nsetpu = ["b"]\n', 2, "unknown key 'setpu'"),
        ('\n\nsetup = "make"\n', 3, "setup must be a list of command strings, got str"),
        ('warm = ["ok", 3]\n', 1, "warm[1] must be a non-empty command string"),
        ('egress = ["10.0.0.1"]\n', 1, "is not a host name"),
        ('\n[env]\nGOOD = "1"\nBAD = 2\n', 4, "env.BAD must be a string"),
        ('[env]\n"1BAD" = "x"\n', 2, "not a valid variable name"),
        ("[pool]\nsize = 2\n", 1, "unknown key 'pool'"),
        ('setup = []\nci_fix_attempts = "2"\n', 2, "ci_fix_attempts must be a whole number"),
        ("ci_fix_attempts = 11\n", 1, "from 0 to 10"),
        ("ci_fix_attempts = -1\n", 1, "from 0 to 10"),
        ("ci_fix_attempts = true\n", 1, "from 0 to 10"),
    ],
)
def test_malformed_file_names_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(SpecFileError) as caught:
        parse_spec_file(text)
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f".nightshift.toml line {line}: ")


def test_file_wins_where_both_say_something() -> None:
    stored = RepoSpec(
        name="proj",
        url="/x",
        setup=["stored setup"],
        warm=["stored warm"],
        env={"A": "stored", "B": "stored"},
        egress=["example.com"],
    )
    file = parse_spec_file('setup = ["file setup"]\n[env]\nB = "file"\nC = "file"\n')
    merged = stored.with_file(file)
    assert merged.setup == ["file setup"]
    assert merged.warm == ["stored warm"]  # the file said nothing about warm
    assert merged.egress == ["example.com"]
    assert merged.env == {"A": "stored", "B": "file", "C": "file"}
    assert merged.image_hash() != stored.image_hash()
    assert stored.with_file(None) is stored
