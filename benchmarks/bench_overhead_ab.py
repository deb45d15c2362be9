"""Probe overhead of two versions of the code, measured in interleaved rounds on one machine:

    python benchmarks/bench_overhead_ab.py --before bfea9b3 --rounds 6     # writes its section of benchmarks/RESULTS.md

Each round runs one fresh process per version (the order alternating between rounds), in a checkout of that
version (`git worktree`, made once under the system's temporary directory); each process loads the shipped baseline,
warms up, and times `inner` probed generations, each between two unprobed ones (4 context + 1 frame, 50 steps, 2
threads), for layer 15 and for all 30 layers (full mode, HookPoints, features and attention). A ratio is the probed
time over the mean of its two unprobed neighbours; the table gives, per version and setting, the median over all
ratios and the per-round medians. Every probed video equals the unprobed one bitwise (checked in each process).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_overhead_ab: start -->", "<!-- bench_overhead_ab: end -->"

ROUND = """
import json, time, torch
torch.set_num_threads(2)
from probes import Probe
from scd import VideoBenchmark, generate, load_model
model = load_model("baseline")
clip = VideoBenchmark("val", frames=5).clip(0)
reference = generate(model, clip[:4], 1, steps=50)

def timed(layers):
    start = time.perf_counter()
    if layers is None:
        video = generate(model, clip[:4], 1, steps=50)
    else:
        with Probe(model, layers):
            video = generate(model, clip[:4], 1, steps=50)
    seconds = time.perf_counter() - start
    assert torch.equal(video, reference)
    return seconds

ratios = {"layer 15": [], "all 30 layers": []}
for _ in range(INNER):
    for name, layers in (("layer 15", [15]), ("all 30 layers", "all")):
        before, probed, after = timed(None), timed(layers), timed(None)
        ratios[name].append(probed / ((before + after) / 2))
print(json.dumps(ratios))
"""


def checkout(rev: str) -> Path:
    """A worktree of `rev` (made once, kept for later runs)."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    where = Path(tempfile.gettempdir()) / f"scd-probes-{commit[:12]}"
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return where


def one_round(tree: Path, inner: int) -> dict[str, list[float]]:
    done = subprocess.run([sys.executable, "-c", ROUND.replace("INNER", str(inner))], cwd=tree, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="bfea9b3", help="the earlier version (a git revision)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--inner", type=int, default=3, help="probed runs per setting in each process")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    trees = {f"before ({args.before})": checkout(args.before), f"after ({head})": ROOT}
    results: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            results[name].append(one_round(trees[name], args.inner))
            print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]}", flush=True)
    rows = []
    for name, rounds in results.items():
        for setting in ("layer 15", "all 30 layers"):
            every = [v for one in rounds for v in one[setting]]
            per_round = ", ".join(f"{statistics.median(one[setting]):.2f}" for one in rounds)
            rows.append(f"| {name} | {setting} | {statistics.median(every):.3f}x | {per_round} |")
    import torch

    section = "\n".join([
        START, "## Probe overhead before and after (`benchmarks/bench_overhead_ab.py`)", "",
        f"Command: `python benchmarks/bench_overhead_ab.py --before {args.before} --rounds {args.rounds} --inner "
        f"{args.inner}` on {platform.processor() or platform.machine()}, {torch.__version__}, 2 threads, nothing "
        "else running. Shipped baseline, 4 context + 1 frame, 50 steps, full mode, HookPoints, features and "
        "attention; each probed run between two unprobed ones, one fresh process per version and round, the "
        "versions alternating. Every probed video equals the unprobed one bitwise.", "",
        "| version | probed layers | probed / unprobed (median of all) | per-round medians |", "|---|---|---:|---|",
        *rows, END])
    text = args.out.read_text()
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
