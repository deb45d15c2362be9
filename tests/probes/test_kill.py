"""SIGKILL at each stage of a `--force` replacement of a run leaves a loadable run at the path (the old one or the
new one, never neither), and the next write of the same output removes what the killed writer left behind."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from probes.recording import load_run
from scd.files import GENERATOR, SIGNATURE, stale_siblings
from tests.probes.test_store import _write

ROOT = Path(__file__).resolve().parents[2]

# Each stage patches one step of the write to kill the process right there, then rewrites the run with seed 1.
KILLER = """
import os, signal, sys
from pathlib import Path
import numpy as np
import scd.files as outputs
from tests.probes.test_store import _write

stage, path = sys.argv[1], Path(sys.argv[2])
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
calls = {"n": 0}
def nth(n, original, after=False):  # die at the n-th call, before it or right after it
    def call(*a, **k):
        calls["n"] += 1
        if calls["n"] == n and not after:
            die()
        result = original(*a, **k)
        if calls["n"] == n:
            die()
        return result
    return call
if stage == "filling":                     # inside the temporary sibling, half the files written
    np.savez_compressed = die
elif stage == "before swap":               # every file written, nothing swapped yet
    outputs.replace = die
elif stage == "after swap":                # swapped (renameat2 exchange), the old run not yet removed
    outputs._exchange = nth(1, outputs._exchange, after=True)
elif stage.startswith("fallback"):         # a system without renameat2: two renames
    outputs._exchange = lambda a, b: False
    if stage == "fallback between renames":
        Path.rename = nth(2, Path.rename)  # the old run is aside in the signed wrapper, the new one not in place yet
    else:                                  # "fallback after renames": the new run in place, the wrapper not removed
        Path.rename = nth(2, Path.rename, after=True)
_write(path, force=True, seed=1)
print("not killed")
"""

STAGES = {"filling": 0, "before swap": 0, "after swap": 1, "fallback between renames": 0, "fallback after renames": 1}


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_at_any_stage_leaves_the_old_or_the_new_run(tmp_path, stage):
    path = tmp_path / "run"
    _write(path, seed=0)
    result = subprocess.run([sys.executable, "-c", KILLER, stage, str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    before = _tree(tmp_path)
    run = load_run(path)  # between the two renames: read where the old run lies aside, moving nothing
    assert run.manifest["seed"] == STAGES[stage]
    assert _tree(tmp_path) == before, "reading a run changed the tree"

    _write(path, seed=2, force=True)  # the next write of the same output
    assert load_run(path).manifest["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "stale temporary siblings were not removed"


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _signed(path: Path, pid: int, target: str = "run", host: str | None = None) -> Path:
    path.mkdir()
    (path / SIGNATURE).write_text(json.dumps({"generator": GENERATOR, "pid": pid, "host": host or socket.gethostname(),
                                              "target": target}))
    return path


def test_a_live_writer_s_temporary_sibling_is_not_taken_for_stale(tmp_path):
    """Only signed siblings whose writer is gone are removed: another process still writing keeps its own, and a
    look-alike without the signature (or signed on another host, or for another target) is a user's."""
    (tmp_path / "run").mkdir()
    _signed(tmp_path / f".run.{os.getppid()}.abc.tmp", os.getppid())  # the parent process (pytest's runner) is alive
    dead = _signed(tmp_path / ".run.999999999.abc.tmp", 999999999)
    _signed(tmp_path / ".run.999999998.abc.tmp", 999999998, host="elsewhere")
    _signed(tmp_path / ".run.999999997.abc.tmp", 999999997, target="other")
    (tmp_path / ".run.999999996.abc.tmp").mkdir()  # unsigned: a user's
    (tmp_path / ".run.999999995.abc.tmp").write_text("mine")
    assert stale_siblings(tmp_path / "run") == [dead]


def test_a_killed_probe_run_with_force_keeps_the_old_run(tmp_path, tiny_checkpoints):
    """The command end to end: `probe run --force` killed while it computes leaves the old run loadable."""
    base, _ = tiny_checkpoints
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "probe_cli", "run", "--model", str(base), "--layer", "1", "--context", "2",
            "--quiet", "--out", str(out)]
    assert subprocess.run([*argv, "--frames", "2", "--steps", "2", "--seed", "0"], cwd=ROOT, timeout=120).returncode == 0
    process = subprocess.Popen([*argv, "--frames", "200", "--steps", "1000", "--seed", "1", "--force"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # still computing (200,000 steps) when it is killed
            process.wait(timeout=8)
    finally:
        process.kill()
        process.wait()
    assert load_run(out).manifest["seed"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == [0, 1]
    assert subprocess.run([*argv, "--steps", "2", "--seed", "2", "--force"], cwd=ROOT, timeout=120).returncode == 0
    assert load_run(out).manifest["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


TRAIN_KILLER = """
import os, signal, sys
import scd.zoo
from probe_cli import main

calls = {"n": 0}
original = scd.zoo.save_file
def save_file(*a, **k):  # the second checkpoint write of the sitting: the run half trained
    calls["n"] += 1
    if calls["n"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*a, **k)
scd.zoo.save_file = save_file
main(sys.argv[1:])
"""


@pytest.mark.parametrize("force", [False, True])
def test_a_killed_training_leaves_the_old_run_or_nothing_and_the_next_one_cleans_up(tmp_path, force):
    """A training killed half way (a new one, or one replacing an older run with --force) leaves the old run as it
    was, or no directory at all; its signed wrapper is removed by the next training of that output."""
    out = tmp_path / "t"
    argv = ["train", "baseline", "--size", "tiny", "--steps", "4", "--batch-size", "1", "--frames", "2",
            "--checkpoint-every", "1", "--quiet", "--out", str(out)]
    if force:
        shorter = [("2" if a == "4" else a) for a in argv]  # an older run of 2 steps
        assert subprocess.run([sys.executable, "-m", "probe_cli", *shorter], cwd=ROOT, timeout=300).returncode == 0
    before = _tree(tmp_path)
    killed = subprocess.run([sys.executable, "-c", TRAIN_KILLER, *argv, *(["--force"] if force else [])], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith(".t.")} == before
    assert len(left) == (2 if force else 1) and left[0].startswith(".t."), left  # the killed writer's signed wrapper
    assert subprocess.run([sys.executable, "-m", "probe_cli", *argv, "--force"], cwd=ROOT, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
