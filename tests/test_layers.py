"""The house in layers (issue 33): every causal_lib module imports only from its own floor or the floors below it
(imports inside functions included). The command lines sit on the top floor with the book: they may import any
floor, and no library module imports them."""
from pathlib import Path

from test_imports import PACKAGE, import_graph

# Bottom to top. The ground floor is the params and the run helpers: the standard library, config and each other.
FLOORS = (
    ("ground", ("causal_lib.config", "causal_lib.core")),  # and the package itself (causal_lib/__init__.py)
    ("models", ("causal_lib.models",)),
    ("data", ("causal_lib.data",)),
    ("statistics", ("causal_lib.stats",)),
    ("training", ("causal_lib.training",)),
    ("defenses", ("causal_lib.defenses",)),
    ("evaluation", ("causal_lib.evaluation",)),
    ("verification", ("causal_lib.verification",)),
    ("book", ("causal_lib.book",)),
)
# the command lines: `python -m causal_lib.training | .evaluation`, derive_base's; each is run, never imported
COMMANDS = ("causal_lib.training.cli", "causal_lib.training.__main__", "causal_lib.training.derive_base",
            "causal_lib.evaluation.cli", "causal_lib.evaluation.__main__")


def floor_of(module: str) -> int:
    """The floor number of a module: the longest prefix that FLOORS names (the package itself is the ground)."""
    best, depth = (0, 0) if module == "causal_lib" else (None, -1)
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    if best is None:
        raise AssertionError(f"{module}: on no floor; add its package to FLOORS in tests/test_layers.py")
    return len(FLOORS) if module in COMMANDS else best


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = floor_of(module)
        for t in sorted(targets):
            if t in COMMANDS and not (module.endswith(".__main__") and module.rpartition(".")[0] == t.rpartition(".")[0]):
                out.append(f"{module} imports the command line {t}")
            elif t not in COMMANDS and floor_of(t) > mine:
                out.append(f"{module} ({FLOORS[mine][0] if mine < len(FLOORS) else 'command'}) imports upward: "
                           f"{t} ({FLOORS[floor_of(t)][0]})")
    return out


def test_no_import_runs_upward():
    graph = import_graph()
    assert {floor_of(m) for m in graph} >= set(range(len(FLOORS))), "a floor with no module: update FLOORS"
    assert violations(graph) == []


def test_the_layer_check_fails_on_a_planted_upward_import(tmp_path):
    import shutil

    copy = tmp_path / "causal_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "base_model*", "vendored"))
    progress = copy / "core" / "progress.py"
    progress.write_text(progress.read_text() + "\n\ndef _planted():\n    from causal_lib.book import reports\n")
    stats = copy / "stats" / "intervals.py"
    stats.write_text(stats.read_text() + "\nfrom causal_lib.training import cli\n")
    found = violations(import_graph(copy))
    assert any("causal_lib.core.progress (ground) imports upward: causal_lib.book.reports (book)" in v for v in found)
    assert any("causal_lib.stats.intervals imports the command line causal_lib.training.cli" in v for v in found)
    assert len(found) == 2, found


def test_a_package_on_no_floor_is_an_error():
    import pytest

    with pytest.raises(AssertionError, match="causal_lib.newroom.mod: on no floor"):
        violations({"causal_lib.core.progress": {"causal_lib.newroom.mod"}})


def test_every_package_is_on_a_floor():
    packages = {p.parent for p in Path(PACKAGE).rglob("__init__.py")}
    for pkg in packages:
        floor_of(".".join(pkg.relative_to(PACKAGE.parent).parts))
