"""Throughput of the baseline on this machine: training tokens/s, sampling frames/s with and without the KV cache.

Measured side by side in one process, each setting repeated, the median reported:

    python benchmarks/bench_baseline.py                      # the shipped `baseline` size
    python benchmarks/bench_baseline.py --size tiny --repeats 2

Writes a markdown table and JSON to benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from scd.data import VideoBenchmark
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.sampling import generate
from scd.training.train import TrainConfig, flow_matching_loss


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_throughput(model: CausalVideoDiffuser, batch: int, frames: int, bf16: bool, repeats: int) -> dict:
    cfg = TrainConfig(batch_size=batch, frames=frames, bf16=bf16)
    clips = VideoBenchmark("train", frames=frames, size=model.config.frame_size).batch(range(batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()

    def step():
        loss = flow_matching_loss(model, clips, cfg, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = _median_seconds(step, repeats)
    tokens = batch * frames * model.config.tokens_per_frame
    return {"setting": f"train step, batch {batch} x {frames} frames, {'bf16 autocast' if bf16 else 'float32'}",
            "seconds": seconds, "tokens/s": tokens / seconds, "frames/s": None}


def sampling_throughput(model: CausalVideoDiffuser, context: int, frames: int, steps: int, use_cache: bool,
                        repeats: int) -> dict:
    clip = VideoBenchmark("val", frames=context + frames, size=model.config.frame_size).clip(0)
    seconds = _median_seconds(lambda: generate(model, clip[:context], frames, steps=steps, use_cache=use_cache), repeats)
    return {"setting": f"sample {frames} frames after {context}, {steps} steps, "
                       f"{'KV cache' if use_cache else 'full recomputation'}",
            "seconds": seconds, "tokens/s": None, "frames/s": frames / seconds}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(BASELINE_SIZES), default="baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per generated frame")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = CausalVideoDiffuser(BASELINE_SIZES[args.size])  # weights do not change the cost
    rows = [training_throughput(model, 8, 8, bf16, args.repeats) for bf16 in (False, True)]
    model.eval()
    for context in (4, 16):
        for use_cache in (True, False):
            rows.append(sampling_throughput(model, context, 4, args.steps, use_cache, args.repeats))
    table = pd.DataFrame(rows)
    cached, full = table["frames/s"].iloc[2::2].to_numpy(), table["frames/s"].iloc[3::2].to_numpy()
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = (f"# Baseline throughput (`{args.size}` size: {asdict(BASELINE_SIZES[args.size])})\n\n"
                f"Machine: {machine}. Median of {args.repeats} repeats after a warm-up.\n\n"
                + table.to_markdown(index=False, floatfmt=".3g")
                + f"\n\nKV cache speed-up over full recomputation: {cached[0] / full[0]:.2f}x (4 context frames), "
                  f"{cached[1] / full[1]:.2f}x (16 context frames).\n")
    (out / f"baseline_{args.size}.md").write_text(markdown)
    (out / f"baseline_{args.size}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(markdown)
    return table


if __name__ == "__main__":
    main()
