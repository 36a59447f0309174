"""The import graph among streamgen's top-level modules and subpackages, and every cycle in it.

    python scripts/import_graph.py                       # fails if a cycle passes through cli, bench, demo or train
    python scripts/import_graph.py --check cache,engine  # the same for another set of nodes

A node is a direct child of the package (``cli``, ``bench``, ``cache``, ``engine``, ...); an edge A -> B means some
file of A imports something of B. Every import counts, at module level, inside a function, or under
``if TYPE_CHECKING:``: a lazy or typing-only import still ties the two modules together (each marks its edge, so
the graph shows which loops would fail at import time and which are loops of design). Exits 1 if a cycle passes
through a node of the checked set, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamgen"
DEFAULT_CHECK = ("cli", "bench", "demo", "train")


def _module_parts(path: Path, root: Path) -> list[str]:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(statement, kind) for every import statement; kind: 'module' (runs on import), 'lazy' (inside a function) or
    'typing' (under ``if TYPE_CHECKING:``)."""
    def walk(nodes, kind):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, kind
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, "typing")
                yield from walk(node.orelse, kind)
            else:
                function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from walk(ast.iter_child_nodes(node), "lazy" if function and kind == "module" else kind)

    yield from walk(tree.body, "module")


def _targets(stmt: ast.Import | ast.ImportFrom, here: list[str], is_package: bool, root: str) -> list[str]:
    """The top-level nodes of ``root`` that one import statement reaches (empty for other packages)."""
    if isinstance(stmt, ast.Import):
        names = [alias.name.split(".") for alias in stmt.names]
    else:
        if stmt.level:
            package = here if is_package else here[:-1]
            base = package[: len(package) - (stmt.level - 1)]
        else:
            base = []
        module = base + (stmt.module.split(".") if stmt.module else [])
        # `from streamgen import cli` reaches cli; `from streamgen.cli import x` reaches cli
        names = [module + [alias.name] for alias in stmt.names] if len(module) == 1 else [module]
    return [name[1] for name in names if len(name) > 1 and name[0] == root]


def import_graph(package: Path = PACKAGE) -> dict[tuple[str, str], set[str]]:
    """{(importer, imported): kinds} over the direct children of ``package``; imports within one child are left out."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        here = _module_parts(path, package)
        if len(here) < 2:  # the package's own __init__: its lazy exports are strings, not imports
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt, kind in _imports(tree):
            for target in _targets(stmt, here, path.name == "__init__.py", package.name):
                # names the package re-exports lazily (`from streamgen import StreamingVideoPipeline`) are no nodes
                if target != here[1] and ((package / target).is_dir() or (package / f"{target}.py").is_file()):
                    edges[here[1], target].add(kind)
    return dict(edges)


def cycles(edges) -> list[list[str]]:
    """Every elementary cycle, each listed once, starting at its smallest node."""
    succ = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    found = []

    def extend(path: list[str]):
        for nxt in sorted(succ[path[-1]]):
            if nxt == path[0]:
                found.append(list(path))
            elif nxt > path[0] and nxt not in path:
                extend(path + [nxt])

    for start in sorted(succ):
        extend([start])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", default=",".join(DEFAULT_CHECK),
                        help="comma-separated nodes no cycle may pass through (default: %(default)s)")
    args = parser.parse_args(argv)
    edges = import_graph()
    print("import graph (A -> B: A imports B; unmarked: at module level; lazy: inside a function; "
          "typing: under TYPE_CHECKING):")
    for node in sorted({a for a, _ in edges}):
        outs = [b if edges[node, b] == {"module"} else f"{b} ({', '.join(sorted(edges[node, b]))})"
                for b in sorted(b for a, b in edges if a == node)]
        print(f"  {node} -> {', '.join(outs)}")
    loops = cycles(edges)
    print(f"cycles: {len(loops)}")
    for loop in loops:
        print("  " + " -> ".join(loop + [loop[0]]))
    check = set(args.check.split(","))
    bad = [loop for loop in loops if check & set(loop)]
    if bad:
        print(f"FAIL: {len(bad)} cycle(s) pass through {', '.join(sorted(check))}")
        return 1
    print(f"ok: no cycle passes through {', '.join(sorted(check))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
