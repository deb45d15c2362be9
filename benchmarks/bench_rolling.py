"""Long rollouts of a Self-Forcing-shaped model: frames per second and memory with a rolling KV window and sinks,
side by side with the growing cache, in one run.

    python benchmarks/bench_rolling.py --device cuda                      # Wan-1.3B-sized, 480p latents
    python benchmarks/bench_rolling.py --latent-size 8x8 --frames 12      # a CPU-sized check

The model is the baseline family at the `wan1.3b` size with seeded random weights (`scd.zoo.random_model`: width
1536, 30 blocks, 12 heads, 16-channel 60x104 latents in 2x2 patches, 1,560 tokens per frame), sampled as
Self-Forcing samples: 4 timesteps 1000,750,500,250 warped at shift 5, the re-noising sampler. One frame per chunk
(the built-in family's chunk; Self-Forcing denoises 3 latent frames together). The two cache policies run
interleaved (`--repeats` rounds, the order alternating); frames per second is the median over rounds. Memory: the
KV cache's bytes at the end of the rollout (exact) and, on CUDA, the peak allocated memory of the generation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from scd.contract import CachePolicy
from scd.sampling import generate
from scd.zoo import random_model

TIMESTEPS = [1000, 750, 500, 250]


def rollout(model, context, frames, policy, device) -> dict:
    """One timed rollout: seconds, frames per second, the cache's bytes at the end, CUDA peak (None on the CPU)."""
    cache = model.new_cache(policy)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    generate(model, context, frames, timesteps=TIMESTEPS, warp=True, shift=5.0, sampler="renoise", device=device,
             dtype=next(model.parameters()).dtype, cache=cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "frames_per_second": frames / seconds, "cache_bytes": cache.nbytes(),
            "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="wan1.3b", help="the baseline size (scd.zoo.SIZES): wan1.3b, or wan-tiny for "
                        "the GPU check's reduced run")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--latent-size", default="60x104")
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="frames generated per rollout")
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument("--sinks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="the JSON of the figures")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    height, width = (int(v) for v in args.latent_size.lower().split("x"))
    model = random_model("baseline", args.size, device, dtype, frame_size=height, frame_width=width)
    context = torch.randn(args.context, *model.frame_shape, generator=torch.Generator().manual_seed(0))
    policies = {"growing cache": CachePolicy(), f"window {args.window}, {args.sinks} sinks":
                CachePolicy(args.window, args.sinks)}
    generate(model, context, 1, timesteps=TIMESTEPS[:1], device=device, dtype=dtype)  # warm-up, untimed
    runs: dict[str, list[dict]] = {name: [] for name in policies}
    for round_ in range(args.repeats):
        for name in (list(policies) if round_ % 2 == 0 else list(policies)[::-1]):
            runs[name].append(rollout(model, context, args.frames, policies[name], device))
    rows = {name: {"frames_per_second": statistics.median(r["frames_per_second"] for r in rs),
                   "cache_bytes": rs[-1]["cache_bytes"],
                   "peak_bytes": max((r["peak_bytes"] or 0) for r in rs) or None} for name, rs in runs.items()}
    grow, roll = rows["growing cache"], rows[f"window {args.window}, {args.sinks} sinks"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"device": where,
              "dtype": str(dtype).removeprefix("torch."), "latent_size": [height, width],
              "tokens_per_frame": model.layout.tokens_per_frame, "context": args.context, "frames": args.frames,
              "timesteps": TIMESTEPS, "repeats": args.repeats, "policies": rows,
              "speed_ratio_window_over_growing": roll["frames_per_second"] / grow["frames_per_second"],
              "cache_ratio_window_over_growing": roll["cache_bytes"] / grow["cache_bytes"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
