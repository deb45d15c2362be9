"""Faults of the machine while writing: a full disk (ENOSPC) or an I/O error (EIO) at any stage of `probe run`,
`probe report`, `probe train` and `probe convert` leaves the sandbox tree byte-identical (the old output, a
user's look-alike files, nothing added) and ends in one stderr line with the fault's exit code (3).

Each write primitive the commands use is made to fail at its 1st, 2nd, ... call until the command no longer
reaches that call, so every stage that goes through it is hit: creating the temporary (its signature), each data
file, the manifest, the swap. A last test fills a real tmpfs (where this machine lets the tests mount one).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch

import probes.store
import scd.files
import scd.training.train
import scd.zoo
from probe_cli.cli import FAULT, main
from tests.probes.test_store import _write

ROOT = Path(__file__).resolve().parents[1]
LOOK_ALIKES = (".out.old", ".out.999999999.abc.tmp", ".out.html.old", ".out.html.999999999.x.tmp")


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`, hidden ones included, with each file's bytes."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _user_files(root: Path) -> None:
    """A user's files that only look like the toolkit's temporaries and backups."""
    for name in LOOK_ALIKES:
        (root / name).mkdir()
        (root / name / "precious.txt").write_text("mine")


def _failing(original, n: int, code: int, calls: list[int], root: Path):
    """`original`, failing with `code` at the n-th of its calls that write under `root` (the outputs' sandbox); writes
    elsewhere (a benchmark resetting /proc/self/clear_refs) are not outputs and pass."""
    def call(*args, **kwargs):
        paths = [Path(a) for a in (*args, *kwargs.values()) if isinstance(a, str | os.PathLike)]
        if any(p == root or root in p.absolute().parents for p in paths):
            calls[0] += 1
            if calls[0] == n:
                raise OSError(code, os.strerror(code), str(paths[0]))
        return original(*args, **kwargs)
    return call


# (object, attribute) of each write primitive: the temporary's signature and the manifest (Path.write_text), the
# tensors, tables and videos, the two renames and the exchange of a replacement.
PRIMITIVES = {
    "write_text": (Path, "write_text"),
    "save_file (run)": (probes.store, "save_file"),
    "to_parquet": (pd.DataFrame, "to_parquet"),
    "savez_compressed": (np, "savez_compressed"),
    "os.replace": (os, "replace"),
    "os.rename": (os, "rename"),
    "exchange": (scd.files, "_exchange"),
    "save_file (checkpoint)": (scd.zoo, "save_file"),
    "save_file (train state)": (scd.training.train, "save_file"),
    "safetensors": (safetensors.torch, "save_file"),
    "mkdir": (Path, "mkdir"),
    "savefig": (__import__("matplotlib.figure", fromlist=["Figure"]).Figure, "savefig"),
}


def _sweep(monkeypatch, capsys, root: Path, argv: list[str], primitives: list[str]) -> int:
    """Run `argv` with each primitive failing at each of its calls in turn (ENOSPC, then EIO); returns the number of
    faults injected. Every one must end in exit 3, one line, and the tree as it was."""
    before = tree(root)
    injected = 0
    for name in primitives:
        owner, attribute = PRIMITIVES[name]
        for code in (errno.ENOSPC, errno.EIO):
            for n in range(1, 12):
                calls = [0]
                with monkeypatch.context() as m:
                    m.setattr(owner, attribute, _failing(getattr(owner, attribute), n, code, calls, root))
                    result = main(argv)
                err = capsys.readouterr().err
                if calls[0] < n:  # the command no longer reaches an n-th call: every stage of it was hit
                    assert result == 0, err
                    assert all((root / name / "precious.txt").read_text() == "mine" for name in LOOK_ALIKES)
                    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == sorted(LOOK_ALIKES)
                    break
                injected += 1
                assert result == FAULT, f"{name} call {n}: exit {result}: {err}"
                lines = err.strip().splitlines()
                assert len(lines) == 1 and "fault:" in lines[0] and "Traceback" not in err, err
                assert tree(root) == before, f"{name} call {n} ({os.strerror(code)}) changed the tree"
            # the successful run at the end replaced the output: put the old one back for the next primitive
            _restore(root, before)
    return injected


def _restore(root: Path, before: dict[str, bytes | None]) -> None:
    import shutil

    for p in sorted(root.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for name, content in sorted(before.items()):
        path = root / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def test_a_fault_at_any_stage_of_probe_run_leaves_the_tree_as_it_was(tmp_path, tiny_checkpoints, monkeypatch, capsys):
    base, _ = tiny_checkpoints
    root = tmp_path / "sandbox"
    root.mkdir()
    argv = ["run", "--model", str(base), "--layer", "1", "--context", "2", "--frames", "2", "--steps", "2", "--quiet",
            "--out", str(root / "out"), "--force"]
    assert main(argv[:-1]) == 0
    _user_files(root)
    injected = _sweep(monkeypatch, capsys, root, argv, ["write_text", "save_file (run)", "to_parquet",
                                                        "savez_compressed", "os.replace", "exchange", "mkdir"])
    assert injected >= 20


def test_a_fault_at_any_stage_of_probe_report_leaves_the_tree_as_it_was(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    root = tmp_path / "sandbox"
    root.mkdir()
    _write(tmp_path / "run")
    argv = ["report", str(tmp_path / "run"), "-o", str(root / "out.html"), "--quiet", "--force"]  # first without --force
    assert main(argv[:-1]) == 0
    _user_files(root)
    import analyses.report

    rendered = {}  # the faults are in the writes after rendering: the page is rendered once, then written each time
    render = analyses.report.render
    monkeypatch.setattr(analyses.report, "render",
                        lambda *a, **k: rendered["html"] if "html" in rendered else rendered.setdefault("html", render(*a, **k)))
    assert _sweep(monkeypatch, capsys, root, argv, ["write_text", "os.replace", "mkdir"]) >= 4


def test_a_fault_at_any_stage_of_probe_train_leaves_the_tree_as_it_was(tmp_path, monkeypatch, capsys):
    root = tmp_path / "sandbox"
    root.mkdir()
    argv = ["train", "baseline", "--size", "tiny", "--steps", "2", "--batch-size", "1", "--frames", "2",
            "--checkpoint-every", "1", "--quiet", "--out", str(root / "out"), "--force"]
    assert main(argv[:-1]) == 0
    _user_files(root)
    injected = _sweep(monkeypatch, capsys, root, argv, ["write_text", "save_file (checkpoint)",
                                                        "save_file (train state)", "os.replace", "exchange"])
    assert injected >= 15


def test_a_fault_at_any_stage_of_probe_convert_leaves_the_tree_as_it_was(tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    from tests.scd.test_causal_wan import original_layout
    from tests.wan_tiny import tiny

    save_file(original_layout(tiny("wan").state_dict()), tmp_path / "good.safetensors")
    root = tmp_path / "sandbox"
    root.mkdir()
    argv = ["convert", str(tmp_path / "good.safetensors"), str(root / "out"), "--heads", "2", "--force"]
    assert main(argv[:-1]) == 0
    _user_files(root)
    assert _sweep(monkeypatch, capsys, root, argv, ["write_text", "safetensors", "os.replace", "exchange"]) >= 6


def test_a_fault_at_any_stage_of_probe_generate_leaves_the_tree_as_it_was(tmp_path, tiny_checkpoints, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    base, _ = tiny_checkpoints
    root = tmp_path / "sandbox"
    root.mkdir()
    argv = ["generate", "--model", str(base), "--context", "2", "--frames", "1", "--steps", "2", "--quiet", "-o",
            str(root / "out.png"), "--force"]
    assert main(argv[:-1]) == 0
    _user_files(root)
    assert _sweep(monkeypatch, capsys, root, argv, ["write_text", "savefig", "os.replace", "mkdir"]) >= 4


def test_a_fault_at_any_stage_of_probe_export_leaves_the_shipped_checkpoints_as_they_were(tmp_path, monkeypatch,
                                                                                        capsys):
    """The three files of a shipped checkpoint (weights, config, card) are replaced as one set or not at all."""
    import scd.evaluate

    run = tmp_path / "run"
    assert main(["train", "baseline", "--size", "tiny", "--steps", "2", "--batch-size", "1", "--frames", "2", "--quiet",
                 "--out", str(run)]) == 0
    root = tmp_path / "sandbox"
    root.mkdir()
    monkeypatch.setattr(scd.evaluate, "CHECKPOINT_DIR", root)
    argv = ["export", str(run), "--name", "mini", "--clips", "1", "--steps", "2", "--quiet", "--force"]
    assert main(argv[:-1]) == 0
    (run / "validation.csv").unlink()  # the export writes it into the run: kept out of the compared tree
    _user_files(root)
    assert _sweep(monkeypatch, capsys, root, argv, ["write_text", "os.replace", "save_file (checkpoint)"]) >= 6


@pytest.mark.parametrize("command", ["intervene", "bench"])
def test_a_fault_at_any_stage_of_intervene_and_bench_leaves_the_tree_as_it_was(command, tmp_path, tiny_checkpoints,
                                                                             monkeypatch, capsys):
    base, scd = tiny_checkpoints
    root = tmp_path / "sandbox"
    root.mkdir()
    flags = {"intervene": ["--model", str(base), "--reuse", "1", "--knockout", "none", "--skip", "none", "--clips", "2",
                           "--context", "2", "--frames", "2", "--steps", "3"],
             "bench": ["--baseline", str(base), "--scd", str(scd), "--steps", "2", "--context", "2", "--frames", "2",
                       "--repeats", "1", "--clips", "1", "--samples", "1", "--quality-steps", "2"]}[command]
    argv = [command, *flags, "--quiet", "--out", str(root / "out"), "--force"]
    assert main(argv[:-1]) == 0
    _user_files(root)
    assert _sweep(monkeypatch, capsys, root, argv, ["write_text", "to_parquet", "os.replace", "exchange"]) >= 6


FILL = """
import sys
from probe_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_real_full_disk_during_probe_run_leaves_the_old_run(tmp_path, tiny_checkpoints):
    """A tmpfs that holds the old run and a filler: the new run meets a real ENOSPC wherever the free space ends."""
    base, _ = tiny_checkpoints
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        argv = [sys.executable, "-c", FILL, "run", "--model", str(base), "--layer", "1", "--context", "2", "--frames",
                "2", "--steps", "2", "--quiet", "--out", str(disk / "out")]
        assert subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
        _user_files(disk)
        size = sum(p.stat().st_size for p in (disk / "out").iterdir())
        codes = set()
        for free in (0, size // 2, size - 8192):  # the first write, the middle, the last: each meets ENOSPC
            filler = disk / "filler"
            filler.unlink(missing_ok=True)
            stat = os.statvfs(disk)
            with open(filler, "wb") as f:  # leave about `free` bytes
                try:
                    f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free))
                except OSError:
                    pass
            before = tree(disk)
            result = subprocess.run([*argv, "--force"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            codes.add(result.returncode)
            assert result.returncode in (0, FAULT), result.stderr
            if result.returncode == FAULT:
                assert len(result.stderr.strip().splitlines()) == 1 and "No space left" in result.stderr, result.stderr
                assert tree(disk) == before
        assert FAULT in codes
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


def test_a_real_full_disk_during_probe_convert_is_a_fault_not_a_success(tmp_path):
    """diffusers' save_pretrained on a full tmpfs: exit 3 and nothing at the output (never "wrote")."""
    from safetensors.torch import save_file

    from tests.scd.test_causal_wan import original_layout
    from tests.wan_tiny import tiny

    save_file(original_layout(tiny("wan", num_layers=2, ffn_dim=512).state_dict()), tmp_path / "c.safetensors")
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        result = subprocess.run([sys.executable, "-c", FILL, "convert", str(tmp_path / "c.safetensors"),
                                 str(disk / "out"), "--heads", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == FAULT, (result.returncode, result.stdout, result.stderr)
        assert "wrote" not in result.stdout and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
