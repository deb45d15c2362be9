import re
import shutil
import subprocess

import pytest
from PIL import Image

from probe_cli import main
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import save_model
from tests.conftest import randomize


@pytest.fixture
def tiny_checkpoint(tmp_path):
    save_model(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), tmp_path / "tiny" / "model.safetensors")
    return tmp_path / "tiny"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_generate_writes_a_png_strip(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert main(["generate", "--model", str(tiny_checkpoint), "--context", "2", "--frames", "2", "--steps", "2",
                 "-o", str(out)]) == 0
    assert "PSNR" in capsys.readouterr().out
    image = Image.open(out)
    assert image.format == "PNG" and image.width > image.height  # a strip: frames side by side


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--model", "nope"], "unknown model 'nope'"),
    (["generate", "--device", "tpu"], "unknown device"),
    (["generate", "-o", "out.jpg"], "is not a .png file; accepted: a path ending in .png"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert expected in _error(capsys)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv", [["generate", "--steps", "0"], ["generate", "--clip", "-3"], ["train", "wan", "--out", "x"],
                                  ["frobnicate"]])
def test_bad_flags_exit_2(argv, capsys):
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_refused(tiny_checkpoint, capsys):
    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["generate", "--model", str(tiny_checkpoint), "--steps", "1"]) == 2
    assert "sha256" in _error(capsys)


def test_train_then_resume_then_export(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["train", "baseline", "--size", "tiny", "--steps", "4", "--batch-size", "2", "--frames", "4",
            "--checkpoint-every", "2", "--quiet", "--out", str(run)]
    assert main(args + ["--until", "2"]) == 0
    assert main(args) == 2 and "--resume" in _error(capsys)
    assert main(args + ["--resume"]) == 0
    assert "step 4" in capsys.readouterr().out

    import scd.evaluate
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    monkeypatch.setattr(scd.evaluate, "CHECKPOINT_DIR", shipped)
    assert main(["export", str(run), "--name", "mini", "--clips", "2", "--steps", "2"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in shipped.iterdir()) == ["mini.json", "mini.md", "mini.safetensors", "mini.validation.csv"]
    card = (shipped / "mini.md").read_text()
    assert "probe train baseline --size tiny --steps 4" in card and "copy last frame" in card
    assert re.search(r"Shipped: the \*\*(ema|raw)\*\* weights", card)
    assert main(["export", str(run), "--name", "mini", "--clips", "2"]) == 2 and "--force" in _error(capsys)


def test_the_console_script_is_installed():
    probe = shutil.which("probe")
    assert probe, "`probe` is not on PATH: pip install -e ."
    result = subprocess.run([probe, "generate", "--model", "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown model" in result.stderr


def test_a_reader_that_goes_away_is_not_a_fault(tmp_path):
    """`probe study status | head -1`: the closed pipe ends the command quietly (exit 0), not with a fault line."""
    import fcntl
    import os
    import subprocess
    import sys

    seeds = ",".join(map(str, range(64)))  # 384 lines: more than the 4 KiB pipe below holds
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, so the writer must wait for its reader
    proc = subprocess.Popen([sys.executable, "-m", "probe_cli", "study", "status", "--root", str(tmp_path), "--seeds",
                             seeds], stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert reader.readline().startswith(b"reference-s0: 0 of")
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == b""
