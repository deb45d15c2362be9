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
    (["run", "--context", "0"], "does not generate from nothing"),
    (["run", "--control-seed", "3"], "--control-seed seeds the permuted-weights control"),
    (["run", "--timesteps", "1000,757,522,0"], "ends at 0, which is no denoising step"),
    (["plan", "{tmp}/missing", "--out", "{tmp}/p.json"], "is not a run directory"),
    (["study", "train", "--root", "{tmp}/mine.html", "--conditions", "reference", "--seeds", "0"], "is a file"),
    (["study", "status", "--root", "{tmp}/mine.html"], "is a file"),
    (["study", "train", "--root", "/proc/study"], "cannot be written"),
    (["study", "train", "--root", ""], "is not a usable path"),
    (["study", "train", "--root", "{tmp}/s", "--conditions", "bogus"], "unknown bogus"),
    # a layer beyond the shipped models' depth: read from their configs, not by loading them
    (["run", "--layers", "30"], "accepted: block indices in 0..29"),
    (["run", "--layer", "35", "--model", "scd"], "(encoder 0..24, decoder 25..34)"),
    (["run", "--layers", "3", "--model", "baseline-diagonal", "--out", "{tmp}/mine.html"], "already exists"),
    (["run", "--model", "nonexistent"], "unknown model 'nonexistent'"),
    (["run", "--model", "{tmp}/mine.html"], "unknown model"),
    # numbers: integers and the sampler's scales in digits, no exponent
    (["run", "--timesteps", "1e3,500"], "no exponent"),
    (["run", "--shift", "1e1"], "no exponent"),
    (["run", "--steps", "1e3"], "is not an integer"),
    (["run", "--window", "2", "--sink-frames", "3"], "--window / --sink-frames"),
    (["run", "--sink-frames", "1"], "need a window; accepted: a window (--window N)"),
    (["intervene", "--plan", "{tmp}/mine.html", "--out", "{tmp}/iv"], "cannot be read as a plan"),
    (["export", "{tmp}/missing", "--name", "x"], "is not a training directory"),
    (["bench", "--out", "{tmp}/mine.html"], "already exists"),
    (["convert", "{tmp}/missing", "{tmp}/out"], "is not a checkpoint"),
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
