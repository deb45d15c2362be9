"""The project's own promises: the README quick start is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S)
    assert block, "README has no quick-start bash block"
    quick_start = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(quick_start) == 2, quick_start  # install + main job, then the tests
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == quick_start
