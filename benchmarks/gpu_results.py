"""Write the GPU check's figures (`benchmarks/gpu_check.sh`) into a results file, between markers, with the device
and the command of each: replaced on every run, the rest of the file kept.

    python benchmarks/gpu_results.py WORK RESULTS.md BENCH_COMMAND PROBE_COMMAND ROLLING_COMMAND
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

START, END = "<!-- gpu-check: start -->", "<!-- gpu-check: end -->"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def section(work: Path, commands: list[str]) -> str:
    bench = json.loads((work / "bench" / "bench.json").read_text())
    speed = (work / "bench" / "bench.md").read_text()
    heading = f"## {bench['other']} / {bench['baseline']}"
    ratios = speed.split(heading, 1)[1].split("\n## ", 1)[0].strip() if heading in speed else "(no ratio table)"
    probes = json.loads((work / "probes.json").read_text())
    rolling = json.loads((work / "rolling.json").read_text())
    tests = (work / "tests.txt").read_text().strip().splitlines()[-1:] or ["(no output)"]
    size = commands[0].split("--size ", 1)[1].split()[0] if "--size " in commands[0] else "(unnamed)"
    lines = [START, "## The GPU check (`benchmarks/gpu_check.sh`)", "",
             f"Device: {bench.get('device')}; {bench.get('machine')}. Written by `bash benchmarks/gpu_check.sh`.", "",
             f"1. `gpu` tests: {tests[0]}", "",
             f"2. SCD / baseline at the {size} size, random weights (`{commands[0]}`):", "", ratios, "",
             f"3. Every layer probed, {probes['tokens']} tokens per frame, {probes['context']}-frame context, "
             f"{probes['steps']} steps, {probes['dtype']} (`{commands[1]}`): probed / unprobed time "
             f"**{probes['ratio']:.2f}x** ({probes['probed_s']:.2f} s vs {probes['unprobed_s']:.2f} s); peak memory "
             f"{_mib(probes['probed_peak'])} probed vs {_mib(probes['unprobed_peak'])} unprobed.", "",
             f"4. Self-Forcing-shaped rollout ({rolling['tokens_per_frame']} tokens per frame, {rolling['frames']} frames "
             f"after {rolling['context']}, timesteps {rolling['timesteps']} warped at shift 5, re-noising; "
             f"{rolling['dtype']}; `{commands[2]}`):", "",
             "| KV cache | frames/s | cache at the end | peak memory |", "|---|---:|---:|---:|"]
    for name, row in rolling["policies"].items():
        lines.append(f"| {name} | {row['frames_per_second']:.3f} | {_mib(row['cache_bytes'])} | {_mib(row['peak_bytes'])} |")
    lines += ["", f"Window / growing: speed x{rolling['speed_ratio_window_over_growing']:.2f}, cache "
                  f"x{rolling['cache_ratio_window_over_growing']:.2f} (one run, interleaved, median of "
                  f"{rolling['repeats']} rounds).", END]
    return "\n".join(lines)


def main() -> None:
    work, results, *commands = sys.argv[1:]
    path = Path(results)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    new = section(Path(work), commands)
    if START in text:
        text = text[: text.index(START)] + new + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
