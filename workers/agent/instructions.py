"""Repository instructions and skills.

`AGENTS.md` at the repository root goes into the system prompt; a nested one is shown with the
first file the agent touches under its directory (the closest one winning). Skills are folders
holding a `SKILL.md` whose front matter gives `name` and `description`, under
`.nightshift/skills/` in the repository and under the operator's `NIGHTSHIFT_SKILLS_DIR`. Only
their names and descriptions go into the prompt; `load_skill` returns the full text and the
folder's file list when the agent asks (progressive disclosure).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from images.sandboxes.base import Sandbox, SandboxError

REPO_SKILLS = ".nightshift/skills"
CUT_NOTE = "\n\n[cut: this file is longer than {limit} characters (NIGHTSHIFT_INSTRUCTIONS_MAX_CHARS); read the rest with read_file if you need it]"


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    text: str
    source: str
    """Where it came from: a path in the repository, or `operator:<dir>`."""
    files: tuple[str, ...] = ()


@dataclass
class Instructions:
    agents: str = ""
    """The root AGENTS.md (cut to the limit), or ""."""
    skills: dict[str, Skill] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    """(SKILL.md path, why it was skipped)."""
    nested_shown: set[str] = field(default_factory=set)
    """Directories whose AGENTS.md the agent has already been shown."""
    nested_absent: set[str] = field(default_factory=set)
    """Directories known to hold no AGENTS.md (each is looked up once per run)."""


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + CUT_NOTE.format(limit=limit)


def parse_front_matter(text: str) -> tuple[str, str, str]:
    """`name`, `description` and the body of a SKILL.md; ValueError says what is wrong."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter (the file must start with a `---` line)")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by a `---` line") from None
    fields: dict[str, str] = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line.startswith((" ", "\t")):
            fields[key.strip()] = value.strip().strip("\"'")
    missing = [k for k in ("name", "description") if not fields.get(k)]
    if missing:
        raise ValueError(f"front matter lacks {' and '.join(missing)}")
    return fields["name"], fields["description"], "\n".join(lines[end + 1 :]).strip()


async def _read(sandbox: Sandbox, path: str, limit: int) -> str | None:
    try:
        data = await sandbox.read_file(path, max_bytes=limit * 4 + 4)
    except SandboxError:
        return None
    return data.decode("utf-8", errors="replace")


async def load(sandbox: Sandbox, skills_dir: Path | None, limit: int) -> Instructions:
    """Read the root AGENTS.md and every skill's front matter."""
    found = Instructions()
    agents = await _read(sandbox, "AGENTS.md", limit)
    if agents is not None:
        found.agents = cut(agents.strip(), limit)
    candidates: list[tuple[str, str, tuple[str, ...]]] = []
    if skills_dir is not None and skills_dir.is_dir():
        for skill_md in sorted(skills_dir.glob("*/SKILL.md")):
            local = skill_md.parent
            listed = tuple(
                str(p.relative_to(local)) for p in sorted(local.rglob("*")) if p.is_file()
            )
            body = skill_md.read_text(errors="replace")
            candidates.append((f"operator:{skill_md}", body, listed))
    try:
        entries = await sandbox.list_files(REPO_SKILLS, recursive=True, limit=2000)
    except SandboxError:
        entries = []
    paths = [e.path for e in entries if e.kind == "file"]
    for path in sorted(p for p in paths if posixpath.basename(p) == "SKILL.md"):
        folder = posixpath.dirname(path)
        text = await _read(sandbox, path, limit)
        files = tuple(posixpath.relpath(p, folder) for p in paths if p.startswith(folder + "/"))
        candidates.append((path, text or "", files))
    for source, text, files in candidates:
        try:
            name, description, body = parse_front_matter(text)
        except ValueError as exc:
            found.invalid.append((source, str(exc)))
            continue
        # A repository's skill overrides an operator's one of the same name (read later).
        found.skills[name] = Skill(name, description, cut(body, limit), source, files)
    return found


def nested_agents_dirs(path: str) -> list[str]:
    """Directories from `path`'s own up to (not including) the root, closest first."""
    parts = posixpath.normpath(path.strip("/")).split("/")[:-1]
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


async def nested_for(sandbox: Sandbox, found: Instructions, path: str, limit: int) -> str:
    """The closest nested AGENTS.md above `path` not shown yet, framed for the model, or ""."""
    for directory in nested_agents_dirs(path):
        if directory in found.nested_absent:
            continue
        if directory in found.nested_shown:
            return ""
        agents_path = f"{directory}/AGENTS.md"
        text = await _read(sandbox, agents_path, limit)
        if text is None:
            found.nested_absent.add(directory)
            continue
        found.nested_shown.add(directory)
        return (
            f"\n\n[Instructions from {agents_path}, which apply under {directory}/ and take "
            f"precedence over the root AGENTS.md there:]\n{cut(text.strip(), limit)}"
        )
    return ""


def prompt_section(found: Instructions) -> str:
    parts: list[str] = []
    if found.agents:
        parts.append(
            "\nThe repository's instructions (AGENTS.md) — follow them:\n"
            f"<agents-md>\n{found.agents}\n</agents-md>\n"
        )
    if found.skills:
        listing = "\n".join(f"- {s.name}: {s.description}" for s in found.skills.values())
        parts.append(
            "\nSkills you can load with `load_skill` when a task calls for one "
            f"(only their descriptions are shown here):\n{listing}\n"
        )
    return "".join(parts)
