"""Every Python block of the README and of docs/ runs as written (issue 46), in a fresh namespace and a temporary
working directory (a block that writes, writes there); the values its comments promise (a shape, a dtype) are
checked where the block says them in a form the test can read: `# <dtype> [d0, d1, ...]` after an expression
statement."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
LOOKS_LIKE = re.compile(r"#\s*(?:float16|float32|float64|bool|int64)?\s*\[\d")
PROMISE = re.compile(r"#\s*(?:(float16|float32|float64|bool|int64)\s*)?\[(\d+(?:,\s*\d+)*)\]")


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            found.append((str(path.relative_to(ROOT)), text[:match.start()].count("\n") + 1, match.group(1)))
    return found


def promises(code: str) -> list[tuple[int, str, str | None, list[int]]]:
    """(line, expression, dtype, shape) of each expression statement whose comment states a dtype and/or shape."""
    lines = code.splitlines()
    out = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Expr | ast.Assign):
            comment = lines[node.lineno - 1].partition("#")[2]
            match = PROMISE.search("#" + comment) if comment else None
            if match:
                target = node.targets[0] if isinstance(node, ast.Assign) else node.value
                out.append((node.lineno, ast.unparse(target), match.group(1),
                            [int(d) for d in match.group(2).split(",")]))
    return out


def run_block(code: str, where: str = "block", line: int = 1) -> None:
    """Run a block in a fresh namespace and check each promise of its comments (AssertionError naming the line)."""
    namespace: dict = {}
    exec(compile(code, f"{where}:{line}", "exec"), namespace)
    lines = code.splitlines()
    promised = promises(code)
    stated = {n for n, *_ in promised}
    for number, text in enumerate(lines, 1):  # a comment that looks like a promise but cannot be read is an error
        if LOOKS_LIKE.search(text.partition("#")[2] and "#" + text.partition("#")[2]) and number not in stated:
            raise AssertionError(f"{where}:{line + number}: a shape comment the test cannot read: {text.strip()!r}; "
                                 "write it as '# dtype [d0, d1, ...]: words'")
    for number, expression, dtype, shape in promised:
        value = eval(expression, namespace)
        assert list(value.shape) == shape, f"{where}:{line + number}: {expression} is {list(value.shape)}, said {shape}"
        if dtype:
            assert str(value.dtype).removeprefix("torch.") == dtype, f"{where}:{line + number}: {expression} is " \
                                                                       f"{value.dtype}, said {dtype}"


@pytest.mark.parametrize("where, line, code", blocks(), ids=[f"{w}:{n}" for w, n, _ in blocks()])
def test_a_python_block_runs_as_written(where, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_block(code, where, line)


@pytest.mark.parametrize("code", [
    "import torch\nx = torch.zeros(2, 3)  # float32 [2, 4]: a wrong shape",
    "import torch\ntorch.zeros(2, 3)  # float64 [2, 3]: a wrong dtype",
    "import torch\ntorch.zeros(2, 3)  # float32 [2 rows, 3 columns]: a promise the test cannot read",
])
def test_a_wrong_promise_fails(code):
    with pytest.raises(AssertionError):
        run_block(code)
