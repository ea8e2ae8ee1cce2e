"""The composition root: services are built with their collaborators and never rewired after,
event handling is declared in one table, and the wiring it declares is what runs."""

from __future__ import annotations

import ast
from pathlib import Path

from app.schemas import RepoCreate
from tests.app.conftest import GitHubEnv
from tests.factories import git, wait_for

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("app", "images", "workers", "integrations")
COMPOSITION_ROOT = ("app/runtime.py", "app/wiring.py", "app/worker_runtime.py", "app/process.py")
MUTATORS = {"append", "extend", "insert", "update", "add", "setdefault"}
"""Called on a service's attribute (`repos.validators.append`), these rewire it."""
REGISTRATIONS = {"register", "subscribe", "bind", "connect"}
"""Called on anything, these rewire it (`control_jobs.register(...)`)."""


def _product_files() -> list[Path]:
    return sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py"))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def _root_name(node: ast.expr) -> str | None:
    """`a` for `a.b.c` or `a.b[k]`; None when the chain does not start at a name."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _handler_registrations(tree: ast.AST) -> list[ast.AST]:
    """`x.handlers.append(...)` (or extend, insert) and `x.handlers = / += ...`."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"append", "extend", "insert"}
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "handlers"
        ):
            found.append(node)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign)
            else []
        )
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "handlers"
                and _root_name(target) != "self"
            ):
                found.append(node)
    return found


def _rewiring(tree: ast.AST) -> list[ast.AST]:
    """What changes a built object from outside it: `obj.attr = ...`, `obj.attr += ...`,
    `obj.attr[k] = ...`, and `obj.attr.append(...)` and the like (`self` is the object's own
    business; plain local lists and dicts are the root's own)."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            on_attribute = isinstance(target, ast.Attribute) or (
                isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute)
            )
            if on_attribute and _root_name(target) != "self":
                found.append(node)
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver = node.func.value
        if _root_name(receiver) == "self":
            continue
        if node.func.attr in REGISTRATIONS or (
            node.func.attr in MUTATORS and isinstance(receiver, ast.Attribute)
        ):
            found.append(node)
    return found


def test_only_the_hub_keeps_handlers_and_the_composition_root_fills_its_table() -> None:
    """No service registers itself (or another) on the hub: the event table is the one place."""
    found = []
    for path in _product_files():
        tree = ast.parse(path.read_text())
        found += [_where(path, n) for n in _handler_registrations(tree)]
    assert found == [], f"handlers registered outside the event table: {found}"


def test_the_composition_root_never_rewires_a_built_service() -> None:
    found = []
    for name in COMPOSITION_ROOT:
        path = ROOT / name
        found += [_where(path, n) for n in _rewiring(ast.parse(path.read_text()))]
    assert found == [], f"assigned onto a service after it was built: {found}"


def test_the_checks_see_what_they_forbid() -> None:
    """The two checks above flag each kind of rewiring they exist to catch."""
    rewired = ast.parse(
        "def build():\n"
        "    repos.validators.append(check)\n"
        "    sessions.dispatcher = dispatcher\n"
        "    runners.sync_events = drain\n"
        "    pull_requests.openers['local'] = pulls\n"
        "    stack.builder.on_built.append(landed)\n"
        "    control_jobs.register('job', job)\n"
        "    hub.handlers.append(observe)\n"
        "    own = []\n"
        "    own.append(1)\n"
        "    table = {}\n"
        "    table['x'] = 1\n"
    )
    assert len(_rewiring(rewired)) == 7
    registered = ast.parse(
        "class S:\n"
        "    def __init__(self, hub):\n"
        "        hub.handlers.append(self._apply)\n"
        "        self.hub.handlers.append(self._apply)\n"
        "        self.handlers = []\n"
    )
    assert len(_handler_registrations(registered)) == 2


def test_services_never_see_the_runtime() -> None:
    """Services get what they use, never the whole process (`Runtime`) or its builder."""
    whole = {"app.runtime", "app.process", "app.wiring", "app.worker_runtime"}
    found = []
    for path in sorted((ROOT / "app" / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            if names & whole:
                found.append(_where(path, node))
    assert found == [], f"services importing the runtime: {found}"


def test_a_push_to_the_base_branch_queues_an_image_build(gh: GitHubEnv) -> None:
    """The push webhook reaches the Images service through the runtime's own wiring: no hook
    of the test's, only the build the push queues, recorded with trigger `push`."""
    rt = gh.runtime
    gh.fake.add_repo("octo/proj")
    rt.repos.add(RepoCreate(url="octo/proj"))

    def settled() -> bool:
        # The build queued when the repo was added (the runtime is started) is over.
        history = rt.image_registry.history("octo/proj", 10)
        busy = rt.image_registry.lock_holder("octo/proj")
        return bool(history) and all(r.status != "building" for r in history) and busy is None

    wait_for(settled, 60, "the image build of the added repo")
    assert all(r.trigger == "added" for r in rt.image_registry.history("octo/proj", 10))
    bare = gh.fake.repos["octo/proj"].path
    sha = git(bare, "commit-tree", "main^{tree}", "-p", "main", "-m", "moved on").strip()
    git(bare, "update-ref", "refs/heads/main", sha)
    r = gh.deliver("push", gh.fake.push_payload("octo/proj", "refs/heads/main", sha))
    assert r.status_code == 202

    def pushed() -> list[object]:
        return [r for r in rt.image_registry.history("octo/proj", 10) if r.trigger == "push"]

    wait_for(pushed, 60, "an image build triggered by the push")
    [build] = pushed()
    assert build.sha == sha  # type: ignore[attr-defined]
