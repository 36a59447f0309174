"""``python scripts/import_graph.py``: the import graph among streamgen's top-level modules, and its cycles."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

COMMAND_SIDE = {"cli", "bench", "demo", "train"}


def test_no_cycle_passes_through_cli_bench_demo_or_train():
    loops = import_graph.cycles(import_graph.import_graph())
    assert [loop for loop in loops if COMMAND_SIDE & set(loop)] == []
    assert import_graph.main(["--check", ",".join(sorted(COMMAND_SIDE))]) == 0


def test_the_commands_reach_the_library_not_the_other_way_round():
    edges = import_graph.import_graph()
    for library in ("pipeline", "engine", "cache", "models", "loading", "resources"):
        assert not any((library, command) in edges for command in COMMAND_SIDE), library
    assert ("train", "bench") in edges and ("bench", "resources") in edges  # the utilities now live below both


def test_every_kind_of_import_makes_an_edge_and_every_cycle_is_listed_once(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from ..a import x\n")                  # sub -> a (module level)
    (package / "a.py").write_text("def f():\n    from .b import y\n")                       # a -> b (lazy)
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import sub\n"
                                  "import pkg.a\n")                                          # b -> sub (typing), a
    edges = import_graph.import_graph(package)
    assert edges == {("sub", "a"): {"module"}, ("a", "b"): {"lazy"}, ("b", "sub"): {"typing"}, ("b", "a"): {"module"}}
    assert import_graph.cycles(edges) == [["a", "b"], ["a", "b", "sub"]]
