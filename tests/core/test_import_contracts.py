"""Import contracts: no import cycle, the layers (core under desktop, the window at the top), a
torch-free state model, and every function-local import in core/ saying why it is deferred.

Read from the source with ``ast`` (function-level imports included), so an import that only runs
later, inside some function, is held to the same rules as one at the top of a module.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "desktop")

# Files that may still hold function-local imports without a ``# deferred: <why>`` comment (none).
PENDING: set[str] = set()

# Import edges (importer, imported) left out of the cycle check until desktop/ is restructured.
# Empty this set when it has.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


# -- reading imports ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportStatement:
    module: str  # the importing module, dotted
    path: Path
    node: ast.Import | ast.ImportFrom
    in_function: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(path: Path) -> list[ImportStatement]:
    """Every import that runs (module level or inside a function); ``if TYPE_CHECKING:`` bodies
    are skipped, as they never run."""
    module = module_name(path)
    found: list[ImportStatement] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(ImportStatement(module, path, node, in_function))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return found


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _base(stmt: ImportStatement) -> str:
    """The module a ``from`` import reads from, relative imports resolved."""
    node = stmt.node
    assert isinstance(node, ast.ImportFrom)
    if not node.level:
        return node.module or ""
    package = stmt.module if stmt.path.name == "__init__.py" else stmt.module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(stmt: ImportStatement, modules: set[str]) -> set[str]:
    """The project modules this statement makes Python run (or find already running).

    ``import a.b.c`` imports packages ``a`` and ``a.b`` too; ``from p import n`` reads submodule
    ``p.n`` when there is one, else the name ``n`` from ``p``'s own body. The importer's own
    parent packages are left out unless it reads a name from their body (``from p import n``, n
    not a submodule): Python starts a package before its submodules, so merely naming one that is
    already being imported cannot be circular.
    """
    node = stmt.node
    needs_body: set[str] = set()  # modules whose top-level code must have finished running
    named: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            named.add(alias.name)
            named.update(_ancestors(alias.name))
    else:
        base = _base(stmt)
        named.add(base)
        named.update(_ancestors(base))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                named.add(sub)
            else:
                needs_body.add(base)
    own_parents = set(_ancestors(stmt.module))
    return {m for m in named if m in modules and m != stmt.module and (m not in own_parents or m in needs_body)}


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for path in modules.values():
        for stmt in import_statements(path):
            for target in imported_modules(stmt, set(modules)):
                graph.add_edge(stmt.module, target, line=stmt.node.lineno)
    return graph


# -- no cycle -------------------------------------------------------------------------------------
def test_the_import_resolver_on_known_statements():
    """The graph's edges for the forms of import the project uses (a wrong resolver would hide cycles)."""
    modules = set(project_modules())

    def targets(module: str, code: str, init: bool = False) -> set[str]:
        path = ROOT / Path(*module.split(".")) / "__init__.py" if init else ROOT / (module.replace(".", "/") + ".py")
        stmt = ImportStatement(module, path, ast.parse(code).body[0], False)
        return imported_modules(stmt, modules)

    assert targets("core.lens", "from core.instrument.norms import norm_gain") == {
        "core.instrument", "core.instrument.norms"}  # not core: its own package, already started
    assert targets("core.verify", "from core.models import load_model") == {"core.models"}
    assert targets("core.models", "from core.models import loader", init=True) == {"core.models.loader"}
    assert targets("core.models.loader", "from core.models.adapters import Adapter") == {"core.models.adapters"}
    assert targets("core.report", "import core") == set()  # reads core.__version__ later, not at import
    assert targets("core.session", "from core import __version__") == {"core"}  # needs core's body run
    assert targets("core.instrument.hooks", "from .norms import norm_eps") == {"core.instrument.norms"}
    assert targets("desktop.cli", "import core.models.catalog") == {"core", "core.models", "core.models.catalog"}


def test_no_import_cycle_in_core_or_desktop():
    graph = import_graph()
    graph.remove_edges_from(KNOWN_CYCLE_EDGES)
    cycles = list(itertools.islice(nx.simple_cycles(graph), 10))
    described = [
        " -> ".join(f"{a} (line {graph.edges[a, b]['line']})" for a, b in zip(c, c[1:] + c[:1])) + f" -> {c[0]}"
        for c in cycles
    ]
    assert not cycles, "import cycles (module, line of its import of the next one):\n" + "\n".join(described)


def test_known_cycle_edges_still_exist():
    """An exception for an edge that is gone is stale: delete it from KNOWN_CYCLE_EDGES."""
    graph = import_graph()
    assert {e for e in KNOWN_CYCLE_EDGES if not graph.has_edge(*e)} == set()


# -- layers ---------------------------------------------------------------------------------------
def _top_level_names(stmt: ImportStatement, modules: set[str]) -> set[str]:
    node = stmt.node
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    return {_base(stmt)} | imported_modules(stmt, modules)


def test_core_never_imports_qt_or_desktop_statically():
    modules = project_modules()
    banned = {"desktop", "PySide6", "pyqtgraph", "shiboken6"}
    bad = [
        f"{stmt.path.relative_to(ROOT)}:{stmt.node.lineno}: {ast.unparse(stmt.node)}"
        for name, path in modules.items() if name.split(".")[0] == "core"
        for stmt in import_statements(path)
        if any(n.split(".")[0] in banned for n in _top_level_names(stmt, set(modules)))
    ]
    assert bad == []


def test_only_the_entry_point_imports_the_main_window():
    modules = project_modules()
    allowed = {"desktop.app", "desktop.cli"}
    bad = [
        f"{stmt.path.relative_to(ROOT)}:{stmt.node.lineno}: {ast.unparse(stmt.node)}"
        for name, path in modules.items() if name not in allowed
        for stmt in import_statements(path)
        if "desktop.app" in imported_modules(stmt, set(modules))
    ]
    assert bad == []


def test_instrumentation_does_not_know_the_model_loader():
    """core.models builds the instrumentation; the instrumentation takes the pieces it needs and
    never refers back (not even for type hints)."""
    back = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for path in sorted((ROOT / "core" / "instrument").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import) and any(a.name.startswith("core.models") for a in node.names)
        or isinstance(node, ast.ImportFrom) and (node.module or "").startswith("core.models")
    ]
    assert back == []


TORCH_FREE = ["core.settings", "core.selection", "core.view", "core.annotations", "core.session", "core.grouping",
              "core.atlas.store", "core.memory",
              "core.heatmap_scale", "core.prompt", "core.chat", "core.analysis", "core.runs", "core.behaviour.browse"]


@pytest.mark.parametrize("module", [m for m in TORCH_FREE if m in project_modules()])
def test_state_modules_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], f"importing {module} imports torch or transformers"


# -- function-local imports -----------------------------------------------------------------------
DEFERRED = "# deferred:"


def undeclared_local_imports(folder: Path) -> dict[str, list[str]]:
    """Function-local imports in ``folder`` whose lines carry no ``# deferred: <why>`` comment,
    by file (relative to the repository root): an import that is local only to dodge a cycle should
    be restructured instead, and one deferred for start-up time says so."""
    out: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for stmt in import_statements(path):
            node = stmt.node
            if stmt.in_function and not any(DEFERRED in line for line in lines[node.lineno - 1: node.end_lineno]):
                out.setdefault(path.relative_to(ROOT).as_posix(), []).append(f"line {node.lineno}: {ast.unparse(node)}")
    return out


@pytest.mark.parametrize("folder", PACKAGES)
def test_function_local_imports_say_why_they_are_deferred(folder):
    found = undeclared_local_imports(ROOT / folder)
    bad = {f: lines for f, lines in found.items() if f not in PENDING}
    assert bad == {}, "\n".join(f"{f} {line}" for f, lines in bad.items() for line in lines)

