"""The house rules of issue #20, read from the source with ``ast`` (see docs/layout.md):

- imports point down the layers and never run in a circle (lazy imports inside functions count);
- no function over 60 lines, no module over 450 lines (``model_wrappers/`` and ``tasks/`` too);
- each idea has one home: the other modules import it and define no copy of their own;
- no dead names: whatever a module defines or imports at its top level is used somewhere.

"The package" is ``lmeval_ctx/`` with the top-level ``model_wrappers/`` and ``tasks/*/utils.py``
under the names they are installed as (``lmeval_ctx.model_wrappers``, ``lmeval_ctx.tasks``).

Every check is a function of a source tree, so the checks are tested themselves on small
synthetic trees (a circle, an upward import, a long function, a copy): each must fail there.
Failure messages name the file and line to fix.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lmeval_ctx"

# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
# tasks/*/utils.py (lm-eval's `!function utils.name` helpers, installed as lmeval_ctx.tasks) sit just
# above taskdata, whose thin YAML-facing adapters they are, and below model_wrappers: they may use
# taskdata and everything under it, and nothing in the package depends on them.
LAYERS = ("common", "methods", "extension", "scoring", "taskdata", "tasks", "model_wrappers", "sweep", "report",
          "entry")
# The package root, `python -m`, the CLI and the plugin registration form the top layer, "entry".
ENTRY_MODULES = {PACKAGE, f"{PACKAGE}.__main__", f"{PACKAGE}.cli", f"{PACKAGE}.plugin"}

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


# -- reading a tree -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Module:
    name: str  # dotted, as installed: model_wrappers/ctx_hf.py -> lmeval_ctx.model_wrappers.ctx_hf
    path: Path
    tree: ast.Module
    root: Path  # the checkout


def read_modules(root: Path) -> dict[str, Module]:
    """The package's modules in a checkout at ``root``: ``lmeval_ctx/``, the top-level
    ``model_wrappers/`` (installed as ``lmeval_ctx.model_wrappers``) and ``tasks/*/utils.py``
    (installed as ``lmeval_ctx.tasks.<folder>.utils``)."""
    files = [(path, [PACKAGE, *path.relative_to(root / PACKAGE).with_suffix("").parts])
             for path in (root / PACKAGE).rglob("*.py")]
    files += [(path, [PACKAGE, "model_wrappers", *path.relative_to(root / "model_wrappers").with_suffix("").parts])
              for path in (root / "model_wrappers").rglob("*.py")]
    files += [(path, [PACKAGE, "tasks", path.parent.name, "utils"]) for path in (root / "tasks").glob("*/utils.py")]
    modules = {}
    for path, parts in files:
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(), filename=str(path)), root)
    return modules


def where(module: Module, node: ast.AST | None = None) -> str:
    """``path:line`` relative to the checkout, for failure messages."""
    shown = module.path.relative_to(module.root)
    return f"{shown}:{node.lineno}" if node is not None else str(shown)


# -- imports ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def _importing_name(module: Module) -> str:
    """The name relative imports are resolved against: a package's ``__init__`` is inside it."""
    return module.name + (".__init__" if module.path.name == "__init__.py" else "")


def _from_module(importer: str | None, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, a relative one resolved against ``importer``."""
    if node.level == 0 or importer is None:
        return node.module or ""
    package = importer.split(".")[: -node.level]
    return ".".join(package + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of ``name`` that is one of ours (``import a.b.c`` imports ``a.b.c``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports(modules: dict[str, Module]) -> list[Import]:
    """Every import of one of our modules by another: at module level, inside functions, under
    ``if TYPE_CHECKING``, ``import x.y`` and ``from x import y`` (``y`` a module or a name in ``x``).
    The parent packages Python imports on the way are not counted: ``import a.b`` is an arrow to
    ``a.b`` only."""
    found = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _from_module(_importing_name(module), node)
                targets = [_known(f"{base}.{alias.name}", modules) for alias in node.names]
            else:
                continue
            found += [Import(module.name, target, node.lineno) for target in dict.fromkeys(targets)
                      if target is not None and target != module.name]
    return found


def layer(name: str) -> str:
    if name in ENTRY_MODULES:
        return "entry"
    sub = name.split(".")[1]
    assert sub in LAYERS, f"{name} is in no layer: add {sub!r} to LAYERS in tests/test_house.py (and docs/layout.md)"
    return sub


def upward_imports(modules: dict[str, Module]) -> list[str]:
    """``path:line: a (layer) imports b (higher layer)`` for each import that points up."""
    return [f"{where(modules[i.source])}:{i.line}: {i.source} ({layer(i.source)}) imports {i.target} "
            f"({layer(i.target)}, a higher layer)"
            for i in imports(modules) if LAYERS.index(layer(i.target)) > LAYERS.index(layer(i.source))]


def import_circles(modules: dict[str, Module]) -> list[str]:
    """Each circle once, as ``a -> b (path:line) -> a (path:line)``: the strongly connected groups
    of the import graph (Tarjan), one shortest circle shown per group."""
    arrows: dict[str, dict[str, int]] = {name: {} for name in modules}
    for i in imports(modules):
        arrows[i.source].setdefault(i.target, i.line)
    groups = _strongly_connected(arrows)
    circles = []
    for group in groups:
        start = min(group)
        if len(group) == 1 and start not in arrows[start]:
            continue
        path = _shortest_return(arrows, start, group)
        steps = " -> ".join(f"{b} ({where(modules[a])}:{arrows[a][b]})" for a, b in zip(path, path[1:]))
        circles.append(f"{start} -> {steps}" + (f"   [group: {', '.join(sorted(group))}]" if len(group) > 2 else ""))
    return circles


def _strongly_connected(arrows: dict[str, dict[str, int]]) -> list[set[str]]:
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in arrows[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(arrows):
        if node not in index:
            visit(node)
    return groups


def _shortest_return(arrows: dict[str, dict[str, int]], start: str, group: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside ``group`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(arrows[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in group and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start}")


# -- sizes --------------------------------------------------------------------------------------
def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines as a reader sees them: from its first decorator (or ``def``) to its last
    line, docstring, comments and blank lines inside included; nested functions count in the outer
    one and are also measured on their own."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return node.end_lineno - first + 1


def long_functions(modules: dict[str, Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [f"{where(m, node)}: {node.name} is {function_lines(node)} lines (at most {limit}: split it into "
            "named steps)"
            for m in modules.values() for node in ast.walk(m.tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and function_lines(node) > limit]


def long_modules(modules: dict[str, Module], limit: int = MAX_MODULE_LINES) -> list[str]:
    """Every line of the file counts (``len(text.splitlines())``)."""
    sizes = {m: len(m.path.read_text().splitlines()) for m in modules.values()}
    return [f"{where(m)}: {size} lines (at most {limit}: split the module)"
            for m, size in sizes.items() if size > limit]


# -- one home per idea --------------------------------------------------------------------------
def module_level_definitions(module: Module) -> dict[str, int]:
    """Names a module defines at its top level (``def``, ``class``, assignments, including those
    under module-level ``if``/``try``), with their line; imported names are not definitions."""
    found: dict[str, int] = {}

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(node.name, node.lineno)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            found.setdefault(name.id, node.lineno)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", ()):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(module.tree.body)
    return found


def definitions_outside(modules: dict[str, Module], names, home: str) -> list[str]:
    """``path:line: module defines NAME`` for each of ``names`` defined outside ``home``."""
    return [f"{where(m)}:{line}: {m.name} defines {name}; its one home is {home}: import it from there"
            for m in modules.values() if m.name != home
            for name, line in module_level_definitions(m).items() if name in names]


def names_used(modules: dict[str, Module], names, home: str | None = None) -> list[str]:
    """``path:line`` of every mention of ``names`` (a name, an attribute or an imported name) outside ``home``."""
    found = []
    for m in modules.values():
        if m.name == home:
            continue
        for node in ast.walk(m.tree):
            mentioned = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                         else None)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mentioned = next((a.name.split(".")[-1] for a in node.names if a.name.split(".")[-1] in names), None)
            if mentioned in names:
                found.append(f"{where(m, node)}: {m.name} uses {mentioned}")
    return found


def calls_outside(modules: dict[str, Module], owner: str, method: str, home: str) -> list[str]:
    """``path:line`` of every ``owner.method(...)`` call (``owner`` a name or an attribute) outside ``home``."""
    found = []
    for m in modules.values():
        if m.name == home:
            continue
        for node in ast.walk(m.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method
                    and getattr(node.func.value, "id", getattr(node.func.value, "attr", None)) == owner):
                found.append(f"{where(m, node)}: {m.name} calls {owner}.{method}; its one home is {home}")
    return found


# -- dead names ---------------------------------------------------------------------------------
def _module_aliases(module_name: str | None, tree: ast.Module, known: set[str]) -> dict[str, str]:
    """Local names bound to one of our modules in a file: ``import a.b`` binds ``a``; ``import a.b as
    c`` binds ``c``; ``from a import b`` binds ``b`` when ``a.b`` is a module."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_module(module_name, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def references(tree: ast.Module, module_name: str | None, known: set[str]) -> set[tuple[str, str]]:
    """``(module, name)`` pairs a file refers to: ``from module import name``, ``module.name`` through
    an imported module, and strings naming code (``"module:name"``, ``"module.name"``, as entry
    points, lm-eval's lazy registry and ``mock.patch`` write them). In the package's own modules
    (``module_name`` given), a string that is exactly an identifier, as a table naming the function
    ``getattr`` fetches, is ``("", name)``: a use of that name in any module."""
    found = set()
    aliases = _module_aliases(module_name, tree, known)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found |= {(_from_module(module_name, node), alias.name) for alias in node.names}
        elif isinstance(node, ast.Attribute) and _dotted(node.value, aliases):
            found.add((_dotted(node.value, aliases), node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value:
            if node.value.isidentifier() and module_name is not None:
                found.add(("", node.value))  # a table of the package naming a function that getattr looks up
            for separator in (":", "."):
                head, _, tail = node.value.rpartition(separator)
                if head in known:
                    found.add((head, tail))
    return found


def _own_uses(module: Module, name: str, line: int) -> bool:
    """Whether a module reads ``name`` outside the statement that defines it (a function calling
    itself is not a use)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load):
            if not any(top.lineno <= node.lineno <= top.end_lineno and top.lineno == line
                       for top in module.tree.body if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef))):
                return True
    return False


def yaml_references(root: Path) -> set[tuple[str, str]]:
    """``!function utils.name`` in the task folders' YAMLs and templates."""
    found = set()
    for path in (root / "tasks").glob("*/*"):
        if path.is_file() and path.suffix != ".py":
            found |= {(f"{PACKAGE}.tasks.{path.parent.name}.{module}", name)
                      for module, name in re.findall(r"!function\s+(\w+)\.(\w+)", path.read_text())}
    return found


def _declared_public(module: Module) -> set[str]:
    """The names in a module-level ``__all__ = [...]`` (or tuple) of string constants."""
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {element.value for element in getattr(node.value, "elts", ()) if isinstance(element, ast.Constant)}
    return set()


def unused_names(modules: dict[str, Module], users: list[Path]) -> list[str]:
    """``path:line: module.name is never used`` for each module-level name (definition or import)
    that neither its own module reads, nor any other file refers to (the package, the files in
    ``users``: tests, benchmarks; the task YAMLs; pyproject's entry points). Dunder names are
    Python's, not ours; names a module lists in ``__all__`` are its declared public interface, for
    users outside the repository."""
    root = next(iter(modules.values())).root
    known = set(modules)
    referred = yaml_references(root)
    for module in modules.values():
        referred |= references(module.tree, _importing_name(module), known)
    for path in users:
        referred |= references(ast.parse(path.read_text(), filename=str(path)), None, known)
    if (root / "pyproject.toml").is_file():
        for text in re.findall(r'"([\w.]+:\w+)"', (root / "pyproject.toml").read_text()):
            referred.add(tuple(text.split(":")))
    problems = []
    for module in modules.values():
        names = dict(module_level_definitions(module))
        for node in module.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                names.update({alias.asname or alias.name: node.lineno for alias in node.names})
        public = _declared_public(module)
        for name, line in names.items():
            if name.startswith("__") and name.endswith("__") or name in public:
                continue
            if not {(module.name, name), ("", name)} & referred and not _own_uses(module, name, line):
                problems.append(f"{where(module)}:{line}: {module.name}.{name} is never used: remove it")
    return problems


def report(problems: list[str], rule: str) -> str:
    return f"{len(problems)} {rule}:\n  " + "\n  ".join(problems)


# == the checks on the checkout ================================================================
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return read_modules(ROOT)


def test_every_module_is_in_a_layer(modules):
    assert {layer(name) for name in modules} <= set(LAYERS)


def test_imports_point_down_the_layers(modules):
    problems = upward_imports(modules)
    assert not problems, report(problems, "imports point up the layers (" + " < ".join(LAYERS) + ")")


def test_no_import_circles(modules):
    problems = import_circles(modules)
    assert not problems, report(problems, "import circles (lazy imports inside functions count)")


def test_no_function_over_60_lines(modules):
    problems = long_functions(modules)
    assert not problems, report(problems, f"functions over {MAX_FUNCTION_LINES} lines")


def test_no_module_over_450_lines(modules):
    problems = long_modules(modules)
    assert not problems, report(problems, f"modules over {MAX_MODULE_LINES} lines")


# Files that use the package besides itself. test_house.py is left out: it names the package's
# names to check them, which is not a use.
USERS = ("tests", "benchmarks", "scripts")


def test_every_module_level_name_is_used(modules):
    """No dead names anywhere in the package: every name a module defines or imports at its top
    level is read by that module, or referred to by name from another module, a test, a benchmark,
    a task YAML or pyproject.toml (see :func:`unused_names`: names, not substrings)."""
    users = [path for folder in USERS for path in (ROOT / folder).rglob("*.py") if path != Path(__file__).resolve()]
    problems = unused_names(modules, users)
    assert not problems, report(problems, "dead names (defined or imported at module level, used nowhere)")


# -- one home for each idea: the homes of issue #20 ---------------------------------------------
def test_the_method_table_has_one_home(modules):
    from lmeval_ctx.methods.catalog import (  # noqa: F401 - the home exists and defines them
        METHOD_NAMES,
        METHOD_OPTION_NAMES,
        METHOD_OWN_OPTIONS,
        factor_text,
        takes_factor,
    )

    names = {"METHOD_NAMES", "METHOD_OPTION_NAMES", "METHOD_OWN_OPTIONS", "factor_text", "takes_factor"}
    problems = definitions_outside(modules, names, "lmeval_ctx.methods.catalog")
    assert not problems, report(problems, "copies of the method table")


def test_the_result_neutral_model_args_have_one_home(modules):
    from lmeval_ctx.common.model_args import RESULT_NEUTRAL_MODEL_ARGS

    assert isinstance(RESULT_NEUTRAL_MODEL_ARGS, frozenset) and "batch_size" in RESULT_NEUTRAL_MODEL_ARGS
    problems = definitions_outside(modules, {"RESULT_NEUTRAL_MODEL_ARGS"}, "lmeval_ctx.common.model_args")
    problems += names_used(modules, {"PLACEMENT_ARGS", "NEUTRAL_MODEL_ARGS", "VLLM_RESOURCE_ARGS"})
    assert not problems, report(problems, "other lists of model args that do not change results")


# The names that held the layer-span rule before #20 (extension.py, attention_patch.py).
LAYER_SPAN_NAMES = {"layer_types_to_scale", "kept_layer_types", "rope_layer_types", "BOUNDED_LAYER_TYPES",
                    "SCALE_ALL_LAYER_TYPES", "_requested_layer_types"}


def test_the_layer_span_rule_has_one_home(modules):
    import lmeval_ctx.extension.layers  # noqa: F401 - the home exists

    problems = definitions_outside(modules, LAYER_SPAN_NAMES, "lmeval_ctx.extension.layers")
    assert not problems, report(problems, "copies of the layer-span rule")


def test_the_default_window_has_one_home(modules):
    import lmeval_ctx.extension.window  # noqa: F401 - the home exists

    home = "lmeval_ctx.extension.window"
    problems = definitions_outside(modules, {"model_window"}, home)
    # lm-eval's own default window (HFLM._DEFAULT_MAX_LENGTH through resolve_max_length) is read there only
    problems += names_used(modules, {"resolve_max_length", "_DEFAULT_MAX_LENGTH"}, home)
    assert not problems, report(problems, "other places that work out the evaluation window")


def test_config_loading_has_one_home(modules):
    import lmeval_ctx.common.checkpoint  # noqa: F401 - the home exists

    problems = calls_outside(modules, "AutoConfig", "from_pretrained", "lmeval_ctx.common.checkpoint")
    assert not problems, report(problems, "config loads outside lmeval_ctx.common.checkpoint")


def test_registration_has_one_home(modules):
    from lmeval_ctx.plugin import MODELS  # noqa: F401 - the one table

    problems = calls_outside(modules, "model_registry", "register", "lmeval_ctx.plugin")
    problems += definitions_outside(modules, {"MODELS", "MODEL_TARGETS", "TASK_PACKAGES", "SHIPPED_FOLDERS"},
                                    "lmeval_ctx.plugin")
    assert not problems, report(problems, "registrations outside lmeval_ctx.plugin")


# == the checker on trees made to break each rule ==============================================
def make_tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    """A checkout with the given files (``lmeval_ctx/...``, ``model_wrappers/...``, ``tasks/...``)."""
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for top in ("lmeval_ctx", "model_wrappers"):
        for folder in [tmp_path / top, *(tmp_path / top).rglob("*")]:
            if folder.is_dir() and not (folder / "__init__.py").exists():
                (folder / "__init__.py").write_text("")
    return read_modules(tmp_path)


def test_checker_maps_the_top_level_folders_into_the_package(tmp_path):
    tree = make_tree(tmp_path, {"lmeval_ctx/common/a.py": "", "model_wrappers/ctx.py": "",
                                "tasks/passkey/utils.py": "", "tasks/passkey/other.py": ""})
    assert set(tree) == {"lmeval_ctx", "lmeval_ctx.common", "lmeval_ctx.common.a", "lmeval_ctx.model_wrappers",
                         "lmeval_ctx.model_wrappers.ctx", "lmeval_ctx.tasks.passkey.utils"}
    assert where(tree["lmeval_ctx.model_wrappers.ctx"]) == "model_wrappers/ctx.py"
    assert where(tree["lmeval_ctx.tasks.passkey.utils"]) == "tasks/passkey/utils.py"
    assert where(tree["lmeval_ctx.common"]) == "lmeval_ctx/common/__init__.py"


def test_checker_finds_a_circle_through_a_lazy_import(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/report/results.py": "from lmeval_ctx.report import page\n",
        "lmeval_ctx/report/page.py": "def draw():\n    from .results import load\n",
    })
    (circle,) = import_circles(tree)
    assert circle == ("lmeval_ctx.report.page -> lmeval_ctx.report.results (lmeval_ctx/report/page.py:2) -> "
                      "lmeval_ctx.report.page (lmeval_ctx/report/results.py:1)")


def test_checker_finds_a_circle_of_three_and_a_module_importing_itself_is_none(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/common/a.py": "import lmeval_ctx.common.b\nimport lmeval_ctx.common.a\n",
        "lmeval_ctx/common/b.py": "from lmeval_ctx.common import c\n",
        "lmeval_ctx/common/c.py": "if True:\n    from lmeval_ctx.common.a import name\n",
        "lmeval_ctx/common/d.py": "from lmeval_ctx.common import a, b\n",  # imports into the circle: not in it
    })
    (circle,) = import_circles(tree)
    assert circle.startswith("lmeval_ctx.common.a -> lmeval_ctx.common.b (lmeval_ctx/common/a.py:1) -> "
                             "lmeval_ctx.common.c (lmeval_ctx/common/b.py:1) -> lmeval_ctx.common.a "
                             "(lmeval_ctx/common/c.py:2)")
    assert "common.d" not in circle


def test_checker_counts_a_package_reexport_as_an_arrow_but_not_the_implicit_parent(tmp_path):
    # methods/__init__ re-exports the catalog; catalog does not import its parent by being imported
    tree = make_tree(tmp_path, {
        "lmeval_ctx/methods/__init__.py": "from lmeval_ctx.methods.catalog import NAMES\n",
        "lmeval_ctx/methods/catalog.py": "NAMES = ()\n",
        "lmeval_ctx/methods/rope.py": "from lmeval_ctx.methods import NAMES\n",
    })
    assert import_circles(tree) == []
    assert {(i.source, i.target) for i in imports(tree)} == {
        ("lmeval_ctx.methods", "lmeval_ctx.methods.catalog"), ("lmeval_ctx.methods.rope", "lmeval_ctx.methods")}


def test_checker_finds_an_upward_import_inside_a_function(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/extension/request.py": "def f():\n    from ..sweep.run import point\n",
        "lmeval_ctx/sweep/run.py": "from lmeval_ctx.extension import request\n",
        "model_wrappers/ctx_hf.py": "from lmeval_ctx.cli import main\n",
        "tasks/passkey/utils.py": "from lmeval_ctx.model_wrappers.ctx_hf import X\nfrom lmeval_ctx.taskdata import y\n",
        "lmeval_ctx/taskdata/__init__.py": "",
        "lmeval_ctx/cli.py": "import lmeval_ctx.report\n",
        "lmeval_ctx/report/__init__.py": "",
    })
    assert sorted(upward_imports(tree)) == [
        "lmeval_ctx/extension/request.py:2: lmeval_ctx.extension.request (extension) imports lmeval_ctx.sweep.run "
        "(sweep, a higher layer)",
        "model_wrappers/ctx_hf.py:1: lmeval_ctx.model_wrappers.ctx_hf (model_wrappers) imports lmeval_ctx.cli "
        "(entry, a higher layer)",
        "tasks/passkey/utils.py:1: lmeval_ctx.tasks.passkey.utils (tasks) imports lmeval_ctx.model_wrappers.ctx_hf "
        "(model_wrappers, a higher layer)",
    ]


def test_checker_names_a_module_in_no_layer(tmp_path):
    tree = make_tree(tmp_path, {"lmeval_ctx/utilities/misc.py": ""})
    with pytest.raises(AssertionError, match="lmeval_ctx.utilities.misc is in no layer"):
        layer("lmeval_ctx.utilities.misc")
    assert "lmeval_ctx.utilities.misc" in tree


def test_checker_measures_functions_from_the_decorator_and_modules_by_lines(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    tree = make_tree(tmp_path, {
        "lmeval_ctx/common/ok.py": f"def fits():\n{body}\n    return x0\n",  # 60 lines
        "lmeval_ctx/common/long.py": f"@decorator\ndef too_long():\n{body}\n    return x0\n",  # 61 with the decorator
        "lmeval_ctx/common/big.py": "x = 1\n" * 451,
        "lmeval_ctx/common/fine.py": "x = 1\n" * 450,
    })
    assert long_functions(tree) == ["lmeval_ctx/common/long.py:2: too_long is 61 lines (at most 60: split it into "
                                    "named steps)"]
    assert long_modules(tree) == ["lmeval_ctx/common/big.py: 451 lines (at most 450: split the module)"]


def test_checker_finds_a_nested_long_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(60))
    tree = make_tree(tmp_path, {"model_wrappers/ctx_hf.py": f"class C:\n    def method(self):\n{body}\n"})
    assert long_functions(tree) == ["model_wrappers/ctx_hf.py:2: method is 61 lines (at most 60: split it into "
                                    "named steps)"]


def test_checker_finds_copies_by_definition_not_by_mention(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/methods/catalog.py": "METHOD_NAMES = ()\ndef takes_factor(m): ...\n",
        "lmeval_ctx/cli.py": "from lmeval_ctx.methods.catalog import METHOD_NAMES\nhelp = str(METHOD_NAMES)\n"
                             "# METHOD_NAMES in a comment\ntext = 'takes_factor'\n",
        "lmeval_ctx/report/write.py": "import x\nif x:\n    METHOD_NAMES, other = (), 1\n",
        "lmeval_ctx/sweep/points.py": "class takes_factor: ...\n",
        "model_wrappers/ctx_hf.py": "def f():\n    METHOD_NAMES = ()\n",  # a local name, not a module's definition
    })
    problems = definitions_outside(tree, {"METHOD_NAMES", "takes_factor"}, "lmeval_ctx.methods.catalog")
    assert sorted(problems) == [
        "lmeval_ctx/report/write.py:3: lmeval_ctx.report.write defines METHOD_NAMES; its one home is "
        "lmeval_ctx.methods.catalog: import it from there",
        "lmeval_ctx/sweep/points.py:1: lmeval_ctx.sweep.points defines takes_factor; its one home is "
        "lmeval_ctx.methods.catalog: import it from there",
    ]


def test_checker_finds_retired_names_and_calls_outside_their_home(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/common/checkpoint.py": "from transformers import AutoConfig\n"
                                           "c = AutoConfig.from_pretrained(p)\n",
        "lmeval_ctx/sweep/run.py": "import transformers\n"
                                   "def f():\n    return transformers.AutoConfig.from_pretrained(p)\n",
        "lmeval_ctx/report/read.py": "from lmeval_ctx.scoring.response_cache import VLLM_RESOURCE_ARGS\n",
        "lmeval_ctx/scoring/response_cache.py": "x = cache.NEUTRAL_MODEL_ARGS\n",
    })
    assert calls_outside(tree, "AutoConfig", "from_pretrained", "lmeval_ctx.common.checkpoint") == [
        "lmeval_ctx/sweep/run.py:3: lmeval_ctx.sweep.run calls AutoConfig.from_pretrained; its one home is "
        "lmeval_ctx.common.checkpoint"]
    assert sorted(names_used(tree, {"NEUTRAL_MODEL_ARGS", "VLLM_RESOURCE_ARGS"})) == [
        "lmeval_ctx/report/read.py:1: lmeval_ctx.report.read uses VLLM_RESOURCE_ARGS",
        "lmeval_ctx/scoring/response_cache.py:1: lmeval_ctx.scoring.response_cache uses NEUTRAL_MODEL_ARGS"]


def test_checker_finds_dead_names_and_sees_every_kind_of_use(tmp_path):
    tree = make_tree(tmp_path, {
        "lmeval_ctx/methods/catalog.py": "NAMES = ()\nUNUSED = 1\n"
                                         "def recursive(n):\n    return recursive(n - 1)\n"
                                         "def helper(): ...\nVALUE = helper()\n",
        # NAMES: re-exported and used below; UNUSED: declared public, kept without a user
        "lmeval_ctx/methods/__init__.py": "from lmeval_ctx.methods.catalog import NAMES, UNUSED\n"
                                          "__all__ = ['UNUSED']\n",
        "lmeval_ctx/extension/request.py": "from lmeval_ctx.methods import NAMES\n"
                                           "import lmeval_ctx.methods.catalog as c\n"
                                           "from lmeval_ctx.methods.catalog import VALUE  # imported, never read\n"
                                           "x = c.recursive, NAMES\n",
        # a table naming a function by string, as getattr reads it (the table itself has no user here)
        "lmeval_ctx/extension/table.py": "FORWARDS = {'bloom': 'bloom_forward'}\n",
        "lmeval_ctx/extension/alibi.py": "def bloom_forward(): ...\ndef dead_forward(): ...\n",
        "model_wrappers/ctx_hf.py": "class CtxHFLM: ...\n",
        "tasks/passkey/utils.py": "def passkey_dataset(): ...\ndef orphan(): ...\n",
        "tasks/passkey/_passkey_template": "custom_dataset: !function utils.passkey_dataset\n",
        "tests/test_x.py": "from lmeval_ctx.extension import request\nrequest.x\n",
        "pyproject.toml": '[project.entry-points."lm_eval.models"]\n'
                          'ctx-hf = "lmeval_ctx.model_wrappers.ctx_hf:CtxHFLM"\n',
    })
    users = [tmp_path / "tests" / "test_x.py"]
    assert sorted(unused_names(tree, users)) == [
        "lmeval_ctx/extension/alibi.py:2: lmeval_ctx.extension.alibi.dead_forward is never used: remove it",
        "lmeval_ctx/extension/request.py:3: lmeval_ctx.extension.request.VALUE is never used: remove it",
        "lmeval_ctx/extension/table.py:1: lmeval_ctx.extension.table.FORWARDS is never used: remove it",
        "tasks/passkey/utils.py:2: lmeval_ctx.tasks.passkey.utils.orphan is never used: remove it",
    ]
    # a function only calling itself is dead; the test file's use of request.x keeps x alive
    (tmp_path / "tests" / "test_x.py").write_text("from lmeval_ctx.extension import request\n")
    tree = make_tree(tmp_path, {"lmeval_ctx/extension/request.py": "import lmeval_ctx.methods.catalog as c\n"
                                                                   "x = (c.NAMES, c.VALUE)\n"})
    assert "lmeval_ctx/methods/catalog.py:3: lmeval_ctx.methods.catalog.recursive is never used: remove it" in \
        unused_names(tree, users)
    assert "lmeval_ctx/extension/request.py:2: lmeval_ctx.extension.request.x is never used: remove it" in \
        unused_names(tree, users)
