"""Declared environments in a repo spec: OCI references, Dockerfiles, and bad input refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from images.oci import ReferenceError, parse_reference
from images.spec import RepoSpec, SpecFileError
from images.spec_file import parse_spec_file


@pytest.mark.parametrize(
    ("text", "registry", "path", "tag", "plain"),
    [
        ("python:3.12-slim", "docker.io", "library/python", "3.12-slim", False),
        ("debian", "docker.io", "library/debian", "latest", False),
        ("ghcr.io/org/dev/base:1", "ghcr.io", "org/dev/base", "1", False),
        ("127.0.0.1:5000/tools/img:t", "127.0.0.1:5000", "tools/img", "t", True),
        ("localhost:5000/img", "localhost:5000", "img", "latest", True),
        ("[::1]:5000/img:x", "[::1]:5000", "img", "x", True),
        ("registry.corp:443/dev/base:2", "registry.corp:443", "dev/base", "2", False),
    ],
)
def test_references_parse_like_docker(
    text: str, registry: str, path: str, tag: str, plain: bool
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.path, ref.tag, ref.plain_http) == (registry, path, tag, plain)


def test_digest_references_keep_the_digest_and_no_default_tag() -> None:
    digest = "sha256:" + "ab" * 32
    ref = parse_reference(f"registry.corp/dev/base@{digest}")
    assert (ref.tag, ref.digest) == (None, digest)
    assert str(ref) == f"registry.corp/dev/base@{digest}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Python:3", "lowercase"),
        ("python:3 slim", "whitespace"),
        ("python@sha256:abc", "64 hex digits"),
        ("python:-bad", "not a valid tag"),
        ("reg..corp/x:1", "not a registry host"),
    ],
)
def test_bad_references_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ReferenceError, match=reason):
        parse_reference(text)


def test_spec_environment_fields_and_hash() -> None:
    host = RepoSpec(name="r", url="/r")
    image = RepoSpec(name="r", url="/r", image="python:3.12-slim")
    built = RepoSpec(name="r", url="/r", dockerfile="ci/Dockerfile", context=".")
    assert host.environment() == "host"
    assert image.environment() == "image python:3.12-slim"
    assert built.environment() == "dockerfile ci/Dockerfile"
    assert len({host.image_hash(), image.image_hash(), built.image_hash()}) == 3


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"image": "Bad Ref"}, "whitespace"),
        ({"dockerfile": "../Dockerfile"}, "inside the repository"),
        ({"dockerfile": "/etc/Dockerfile"}, "inside the repository"),
        ({"image": "debian", "dockerfile": "Dockerfile"}, "exclusive"),
        ({"context": "."}, "needs dockerfile"),
    ],
)
def test_spec_refuses_bad_environments(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        RepoSpec(name="r", url="/r", **fields)


def test_spec_file_declares_the_environment_and_wins() -> None:
    stored = RepoSpec(name="r", url="/r", dockerfile="Dockerfile")
    file = parse_spec_file('image = "127.0.0.1:5000/dev/tools:1"\nsetup = ["make"]\n')
    effective = stored.with_file(file)
    assert (effective.image, effective.dockerfile, effective.setup) == (
        "127.0.0.1:5000/dev/tools:1",
        None,
        ["make"],
    )
    file = parse_spec_file('dockerfile = "ci/Dockerfile"\ncontext = "ci"\n')
    effective = RepoSpec(name="r", url="/r", image="debian").with_file(file)
    assert (effective.image, effective.dockerfile, effective.context) == (
        None,
        "ci/Dockerfile",
        "ci",
    )


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('setup = []\nimage = "Not Valid"\n', 2, "whitespace"),
        ("image = 3\n", 1, "must be a string"),
        ('dockerfile = "../x"\n', 1, "inside the repository"),
        ('image = "debian"\ndockerfile = "Dockerfile"\n', 2, "exclusive"),
        ('\ncontext = "."\n', 2, "needs dockerfile"),
    ],
)
def test_spec_file_environment_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(SpecFileError, match=reason) as failed:
        parse_spec_file(text)
    assert failed.value.line == line
