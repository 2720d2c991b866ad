"""The house rules the library keeps, checked on its source: no import circles between its modules
(lazy imports inside functions count, type-checking-only imports do not) and every module's
public names declared in ``__all__``."""
import ast
import importlib

from conftest import ROOT

MODULES = {p.stem: p for p in (ROOT / "peace").glob("*.py") if p.stem not in ("__init__", "__main__")}


def _imports(tree: ast.AST) -> set[str]:
    """The peace modules a module imports (relative imports), anywhere but under ``if TYPE_CHECKING``."""
    out: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            out |= {n for n in names if n in MODULES}
        out |= _imports(node)
    return out


def test_the_library_has_no_import_circles():
    edges = {m: _imports(ast.parse(p.read_text())) for m, p in MODULES.items()}
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


def test_every_module_declares_its_public_names():
    for m in MODULES:
        mod = importlib.import_module(f"peace.{m}")
        assert hasattr(mod, "__all__"), f"peace/{m}.py has no __all__"
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"peace/{m}.py declares names it does not define: {missing}"
