"""The house rules the library keeps, checked on its source (see docs/architecture.md):

- ``peace/`` is a few wings by stage, and imports run one way, down the stages: a module may import
  its own wing and the wings below it, never a later stage (lazy imports inside functions count,
  type-checking-only imports do not);
- no import circles between modules;
- small pieces: no module over 500 lines, no function over 60;
- every module declares its public names in ``__all__``.
"""
import ast
import importlib

from conftest import ROOT

PEACE = ROOT / "peace"
# The stages, bottom up; wings on one line are side by side and never import each other.
STAGES = [("core",), ("nets",), ("zoo", "intake"), ("evaluate",), ("learn",), ("serve",), ("orchestrate",), ("cli",)]
LEVEL = {wing: i for i, wings in enumerate(STAGES) for wing in wings}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def _name(path) -> str:
    """peace/nets/graph.py -> peace.nets.graph; peace/zoo/__init__.py -> peace.zoo; peace/cli.py -> peace.cli."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PEACE.rglob("*.py") if p.name != "__main__.py" and _name(p) != "peace"}


def _wing(module: str) -> str:
    return module.split(".")[1]


def imports(tree: ast.AST, module: str) -> set[str]:
    """The peace modules a module imports (``from peace.wing.mod import x``, ``from peace.wing import mod``,
    relative forms resolved), anywhere in its code but under ``if TYPE_CHECKING``."""
    package = module if module in MODULES and MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for target in [f"{base}.{a.name}" for a in node.names] + [base]:
                if target in MODULES:
                    out.add(target)
                    break
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        out |= imports(node, module)
    return out


def _edges() -> dict[str, set[str]]:
    return {m: imports(ast.parse(p.read_text()), m) - {m} for m, p in MODULES.items()}


def layering_violations(edges: dict[str, set[str]]) -> list[str]:
    """Imports that run up a stage, or sideways into another wing of the same stage."""
    bad = []
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            a, b = _wing(m), _wing(t)
            if a != b and LEVEL[b] >= LEVEL[a]:
                bad.append(f"{m} (stage {a}) imports {t} (stage {b})")
    return bad


def test_every_module_lives_in_a_wing_with_a_docstring():
    stray = sorted(m for m in MODULES if _wing(m) not in LEVEL)
    assert not stray, f"modules outside the wings {sorted(LEVEL)}: {stray}"
    for wing in LEVEL:
        init = PEACE / wing / "__init__.py"
        if wing != "cli":
            assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{init} needs a docstring"
            assert "Imports:" in ast.get_docstring(ast.parse(init.read_text())), f"{init} must say what it may import"


def test_imports_run_down_the_stages():
    bad = layering_violations(_edges())
    assert not bad, "imports against the stages:\n" + "\n".join(bad)


def test_the_layering_check_catches_an_import_up_a_stage():
    """A planted import from the nets wing up into learn (and one sideways, zoo -> intake) is reported."""
    edges = _edges()
    edges["peace.nets.graph"] = edges["peace.nets.graph"] | {"peace.learn.encoder"}
    edges["peace.zoo.store"] = edges["peace.zoo.store"] | {"peace.intake.importers"}
    planted = ast.parse("def f():\n    from peace.learn.run import RunDir\n    from ..serve import index\n")
    found = imports(planted, "peace.nets.symmetry")
    assert found == {"peace.learn.run", "peace.serve.index"}
    assert layering_violations(edges) == ["peace.nets.graph (stage nets) imports peace.learn.encoder (stage learn)",
                                          "peace.zoo.store (stage zoo) imports peace.intake.importers (stage intake)"]


def test_the_library_has_no_import_circles():
    edges = _edges()
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(edges[m]):
            assert state.get(n) != "open", "import circle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_modules_and_functions_stay_small():
    big = []
    for m, p in sorted(MODULES.items()):
        text = p.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            big.append(f"{m}: {text.count(chr(10))} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{m}.{node.name}: {n} lines (limit {MAX_FUNCTION_LINES})")
    for p in sorted((ROOT / "explorer").rglob("*.py")):  # the explorer's pages: one short module each
        if p.read_text().count("\n") > 160:
            big.append(f"{p.relative_to(ROOT)}: over 160 lines")
    assert not big, "\n".join(big)


def test_every_module_declares_its_public_names():
    for m, p in MODULES.items():
        if p.name == "__init__.py":
            continue
        mod = importlib.import_module(m)
        assert hasattr(mod, "__all__"), f"{p} has no __all__"
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"{p} declares names it does not define: {missing}"
