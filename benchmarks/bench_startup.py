"""How fast the `probe` command answers before it does any work: `--help`, a subcommand's `--help`, and refused
bad flags, as a user types them (the installed console script in a fresh process), wall time over repeats.

    python benchmarks/bench_startup.py [--repeats 10]

For scale it also times `python -c "import torch"` and `python -c pass`, side by side in the same run. The
figures in benchmarks/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "probe --help": ["--help"],
    "probe run --help": ["run", "--help"],
    "probe train --help": ["train", "--help"],
    "probe run --steps 0 (refused)": ["run", "--steps", "0"],
    "probe bench --device tpu (refused)": ["bench", "--device", "tpu"],
    "probe export x --name ../x (refused)": ["export", "x", "--name", "../x"],
}


def _time(argv: list[str], expected: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expected:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}, expected {expected}: {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    probe = shutil.which("probe") or sys.exit("the probe command is not installed: pip install -e .")
    rows = []
    references = {"python -c pass": [sys.executable, "-c", "pass"],
                  "python -c 'import torch'": [sys.executable, "-c", "import torch"]}
    for name, argv in [*((n, [probe, *a]) for n, a in COMMANDS.items()), *references.items()]:
        expected = 0 if "--help" in argv or argv[0] == sys.executable else 2
        _time(argv, expected)  # warm the file cache once
        times = [_time(argv, expected) for _ in range(args.repeats)]
        rows.append((name, statistics.median(times), max(times)))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{args.repeats} repeats")
    print("| command | median wall (s) | max wall (s) |\n|---|---:|---:|")
    for name, median, worst in rows:
        print(f"| `{name}` | {median:.3f} | {worst:.3f} |")


if __name__ == "__main__":
    main()
