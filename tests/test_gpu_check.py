"""The GPU check script (`benchmarks/gpu_check.sh`) runs its four steps at a reduced, CPU size and writes its figures,
with the device and each command, between its markers in the results file it is given (never the repository's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_at_a_reduced_size_and_writes_its_figures(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier sections stay\n\n<!-- gpu-check: start -->\nan older check\n"
                       "<!-- gpu-check: end -->\n\nlater sections stay\n")
    bash = shutil.which("bash")
    done = subprocess.run([bash, str(ROOT / "benchmarks" / "gpu_check.sh"), "--reduced", str(results)], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                                                                 "OMP_NUM_THREADS": "1"},
                          timeout=2400)  # a guard against a hang, not a speed test: CI beside other jobs is slow
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nearlier sections stay")
    section = text.split("<!-- gpu-check: start -->", 1)[1].split("<!-- gpu-check: end -->", 1)[0]
    for expected in ("Device: cpu", "`gpu` tests:", "probe_cli bench --size wan-tiny", "frames/s ratio",
                     "bench_probes.py --scale wan-tiny", "probed / unprobed time", "bench_rolling.py --size wan-tiny",
                     "| growing cache |", "| window 4, 1 sinks |", "Window / growing: speed x"):
        assert expected in section, expected
    assert "an older check" not in text and text.count("<!-- gpu-check: start -->") == 1  # replaced, not added
    assert text.rstrip().endswith("later sections stay")
