"""The one direction of imports (scd <- probes <- analyses <- probe_cli), no import cycles, and a command that
starts without torch. Every import is read from the source with `ast`, deferred ones (inside functions) included."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"scd": 0, "probes": 1, "analyses": 2, "probe_cli": 3}  # a package may import only lower levels


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules of ours that a file imports, anywhere in it (TYPE_CHECKING blocks included)."""
    found = set()
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from probes import sweep` imports a module
    return {name for name in found if name.split(".")[0] in LEVELS}


def _files() -> dict[str, Path]:
    return {_module(p): p for package in LEVELS for p in sorted((ROOT / package).rglob("*.py"))}


def _graph() -> dict[str, set[str]]:
    files = _files()
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in _imports(path):
            while target and target not in files:  # `from scd.zoo import load_model` -> scd.zoo
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def test_no_package_imports_a_higher_one():
    upward = [(name, target) for name, edges in _graph().items() for target in edges
              if LEVELS[target.split(".")[0]] > LEVELS[name.split(".")[0]]]
    assert not upward, f"upward imports (file -> what it imports): {upward}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_two_files_import_each_other_directly_or_around_a_cycle():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is how Python packages work, not a cycle between files.
    edges = {name: {t for t in targets if not (t == name.rpartition(".")[0] and _files()[t].name == "__init__.py")}
             for name, targets in graph.items()}
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_the_checks_catch_what_they_are_for():
    """The walker is not vacuous: an upward import and a two-file cycle, built by hand, are found."""
    assert LEVELS["probes"] > LEVELS["scd"]
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = _graph()
    assert "probes.store" in graph["probes.sweep"]  # a real edge is seen, deferred imports included
    assert "scd.zoo" in graph["probe_cli.measuring"]


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["run", "--steps", "0"], ["bench", "--device", "tpu"]])
def test_the_command_answers_without_importing_torch(argv):
    code = ("import sys, probe_cli.cli as m\n"
            f"rc = m.main({argv!r})\n"
            "heavy = sorted(n for n in ('torch', 'diffusers', 'transformer_lens', 'nnsight', 'pandas', 'matplotlib') "
            "if n in sys.modules)\n"
            "print('HEAVY', heavy, 'RC', rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "HEAVY [] RC" in result.stdout, result.stdout + result.stderr
    assert result.stdout.strip().endswith("RC 0" if argv[-1] == "--help" else "RC 2")
