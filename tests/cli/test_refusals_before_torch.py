"""A refusal that needs no model or tensor is made before torch is imported: each command below, run under
`python -X importtime`, exits 2 with one line and never imports torch (the import log names every module loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

REFUSALS = [  # (argv after `probe`, the refusal's words); {tmp}: a temporary directory holding a user's mine.html
    (["show", "{tmp}/missing"], "is not a run directory"),
    (["report", "{tmp}/missing", "-o", "{tmp}/r.html"], "is not a run directory"),
    (["report", "{tmp}/missing", "-o", "{tmp}/mine.html"], "already exists"),
    (["run", "--context", "0"], "applies only to diffusers models"),
    (["run", "--control-seed", "3"], "--control-seed seeds the permuted-weights control"),
    (["run", "--timesteps", "1000,757,522,0"], "each above 0"),
    (["plan", "{tmp}/missing", "--out", "{tmp}/p.json"], "is not a run directory"),
    (["study", "train", "--root", "{tmp}/mine.html", "--conditions", "reference", "--seeds", "0"], "is a file"),
]


@pytest.mark.parametrize("argv, words", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_the_refusal_comes_before_torch_is_imported(argv, words, tmp_path):
    (tmp_path / "mine.html").write_text("a user's file")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "probe_cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and len(said) == 1 and words in said[0], done.stderr[-500:]
    assert "torch" not in imported and not any(name.startswith("torch.") for name in imported)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.html"]  # nothing written
