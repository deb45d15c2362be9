"""The one direction of imports (scd <- probes <- analyses <- probe_cli), no import cycles, and a command that
starts without torch. Every import is read from the source with `ast`, deferred ones (inside functions) included."""

import ast
import re
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


# -- one stated model contract: no family test by attribute outside it ---------------------------------------------

FAMILY_FILES = {"scd/contract.py", "scd/models/baseline.py", "scd/models/scd_model.py",  # the contract and its families
                "scd/wan/causal_wan.py"}
# hasattr / getattr-with-default on objects that are not models, each with why it is not a family test:
NOT_MODELS = {
    ("scd/progress.py", "sys.stderr"),  # a replaced stderr (a notebook's, a test's) may lack isatty
    ("scd/sampling.py", "o"),           # a sampling observer (SamplingObserver) need not implement on_start
    ("probe_cli/cli.py", "error"),      # an OSError's optional filename
    ("probes/store.py", "video"), ("probes/store.py", "kind"),  # naming a refused value's type in a message
    ("scd/training/config.py", "self"),    # a dataclass's own fields, by name
}


def _family_tests(tree: ast.AST, relative: str) -> list[str]:
    """`hasattr(x, ...)` and `getattr(x, "name", default)` calls, as `file:line x.name`, but those in NOT_MODELS."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        sniff = node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) == 3)
        if not sniff or len(node.args) < 2:
            continue
        target = ast.unparse(node.args[0])
        if target in ("args", "torch", "diffusers") or (relative, target) in NOT_MODELS:  # argparse, modules
            continue
        found.append(f"{relative}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_family_test_by_attribute_outside_the_contract():
    """What a model is and can do is asked of `scd.contract.VideoDiffuser` (layout, roles, frame shape, sampling
    attributes), never sniffed with hasattr / getattr defaults (tests: a family test outside the contract fails)."""
    found = []
    for package in LEVELS:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if relative not in FAMILY_FILES:
                found += _family_tests(ast.parse(path.read_text()), relative)
    assert not found, "family tests by attribute outside scd/contract.py:\n" + "\n".join(found)


def test_the_family_test_check_catches_what_it_is_for():
    sniffing = ast.parse("if hasattr(model, 'decoder'):\n    pass\nshift = getattr(model, 'flow_shift', 1.0)\n")
    assert len(_family_tests(sniffing, "analyses/x.py")) == 2
    assert _family_tests(ast.parse("getattr(args, 'model', None)\nmodel.layout.roles\n"), "analyses/x.py") == []


# -- every path a docstring names exists ----------------------------------------------------------------------------

TOP = {"scd", "probes", "analyses", "probe_cli", "notebooks", "reports", "benchmarks", "docs", "tests", ".ci"}
PATH = re.compile(r"(?<![\w<{$.-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|ipynb|j2|toml|cfg))(?![\w/])")


def _missing_paths(text: str, here: Path) -> list[str]:
    """Paths in `text` (`dir/file.py`, `README.md`, `probe.py`) that name a file of the repository that is not there:
    a path under one of its top-level folders, or a bare name that is not beside `here` nor at the root."""
    missing = []
    for name in PATH.findall(text):
        first = name.split("/")[0]
        if "/" in name and first not in TOP:
            continue  # a path inside a user's directory (transformer/config.json, ...), not of this repository
        if "/" not in name and name.endswith(".md") and not name[0].isupper():
            continue  # a file the toolkit writes (table.md, card-NAME.md); the repository's pages are README.md, docs/...
        if not ((ROOT / name).exists() or (here / name).exists()):
            missing.append(name)
    return missing


def test_every_path_a_docstring_names_exists():
    """Docstrings (and comments) send readers to files that are in the repository (a moved or absent file fails)."""
    found = []
    for package in LEVELS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}: {name}" for name in _missing_paths(path.read_text(), path.parent)]
    assert not found, "docstrings name files the repository lacks:\n" + "\n".join(sorted(set(found)))


def test_the_docstring_path_check_catches_what_it_is_for():
    here = ROOT / "probes"
    assert _missing_paths("see DESIGN.md and probes/nowhere.py", here) == ["DESIGN.md", "probes/nowhere.py"]
    assert _missing_paths("see README.md, probe.py, probes/store.py and transformer/model.py", here) == []
