"""The package's architecture: no import cycle inside causal_lib (imports inside functions included, since
those are how cycles hide), and every module imports alone in a fresh interpreter."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "causal_lib"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """Every causal_lib module that `path` imports, at any depth of its code (a `from pkg import name`
    where name is a submodule counts as importing that submodule)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in modules:
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            out |= subs or {target}
            if not subs or len(subs) < len(node.names):
                out.add(target)
    return out - {me}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): internal_imports(f, modules, root) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_in_causal_lib():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "causal_lib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from causal_lib.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # hidden inside a function
    (pkg / "c.py").write_text("import causal_lib.a\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle and set(cycle) == {"causal_lib.a", "causal_lib.sub.b", "causal_lib.c"}


IMPORT_EACH_ALONE = """
import importlib, sys
failures = []
for m in sys.argv[1:]:
    for name in [k for k in sys.modules if k == "causal_lib" or k.startswith("causal_lib.")]:
        del sys.modules[name]  # third-party packages stay loaded: only the order inside causal_lib is tested
    try:
        importlib.import_module(m)
    except Exception as e:
        failures.append(f"{m}: {type(e).__name__}: {e}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_alone():
    """Each module imported first, with no other causal_lib module loaded before it (one fresh interpreter,
    the package unloaded between modules): an import-order dependency shows as an ImportError."""
    modules = sorted(m for m in import_graph() if not m.endswith("__main__"))
    r = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
