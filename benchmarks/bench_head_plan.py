"""A head plan on a Self-Forcing-shaped model: calibrated from its recorded attention, then validated on other
latent contexts over a long rollout with a rolling window and sinks: KV cache bytes, speed and drift, side by side
with the unmodified model in one run.

    python benchmarks/bench_head_plan.py --out benchmarks/results/head_plan_selfforcing_cpu.json   # CPU-sized

The model is the baseline family shaped as Wan-1.3B is (30 blocks, 12 heads, 16-channel latents in 2x2 patches,
Self-Forcing's 4 timesteps 1000, 750, 500, 250 warped at shift 5 and its re-noising sampler, a rolling window with
sink frames as LongLive's) at a CPU width (`--width`, default 192: head dim 16), with seeded random weights
(`scd.zoo.random_model`): no trained Self-Forcing checkpoint is shipped, so what this measures is the mechanism
(what a plan keeps, and what that saves) on attention patterns of random weights, not a trained model's heads.
Calibration: `probes.record` on latent contexts 0..C-1 (attention of every block); the plan: `analyses.head_plan`;
validation: `analyses.interventions.intervention_table` (`probe intervene --plan`'s) on contexts C.. with 2 noise
draws each, the unmodified model and its redraw (the noise floor) interleaved per context.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TIMESTEPS = [1000, 750, 500, 250]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--latent-size", default="16x16")
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument("--sinks", type=int, default=3)
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--calibration-frames", type=int, default=18)
    parser.add_argument("--calibration-clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=36, help="frames generated per validated rollout")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--budgets", default="0.05,0.1,0.2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import probes
    from analyses.head_plan import head_plan, head_validation_table, keep_rules, kept_share
    from analyses.interventions import intervention_table
    from probes.recorder import gaussian_context
    from scd.contract import CachePolicy
    from scd.sampling import warp_timesteps
    from scd.zoo import random_model

    height, width = (int(v) for v in args.latent_size.lower().split("x"))
    model = random_model("baseline", "wan1.3b", frame_size=height, frame_width=width, width=args.width,
                         mlp_ratio=4.0)
    policy = CachePolicy(args.window, args.sinks)
    budgets = [float(b) for b in args.budgets.split(",")]
    recordings = []
    for clip in range(args.calibration_clips):
        frames = args.context + args.calibration_frames
        context = gaussian_context(model.frame_shape, clip, frames)[:args.context]
        recordings.append(probes.record(model, context, layers="all", capture="attention", frames=args.calibration_frames,
                                        timesteps=TIMESTEPS, warp=True, shift=5.0, sampler="renoise",
                                        cache_policy=policy, seed=clip, bands=1))

    class Calibration:  # the live recordings read as one calibration set
        items = [item for r in recordings for item in r.items]
        manifest = recordings[0].manifest
        path = "live recordings (benchmarks/bench_head_plan.py)"

    content = head_plan([Calibration], budgets)
    settings = [("heads", i) for i in range(len(budgets))]
    schedules = {("heads", i): keep_rules(content, i) for i in range(len(budgets))}
    sampling = {"timesteps": warp_timesteps(TIMESTEPS, 5.0), "sampler": "renoise", "cache_policy": policy}
    table = intervention_table(model, settings, clips=args.clips, context=args.context, frames=args.frames,
                               first_clip=args.calibration_clips, schedules=schedules, latent=True, sampling=sampling,
                               draws=args.draws)
    summary = head_validation_table(table)
    written = args.context + args.frames
    result = {"device": f"cpu ({torch.get_num_threads()} threads)", "model": model.checkpoint["name"],
              "config": model.get_config(), "timesteps": TIMESTEPS, "warp_shift": 5.0, "sampler": "renoise",
              "window": args.window, "sinks": args.sinks, "context": args.context,
              "calibration": {"clips": args.calibration_clips, "frames": args.calibration_frames},
              "validation": {"first_clip": args.calibration_clips, "clips": args.clips, "draws": args.draws,
                             "frames": args.frames},
              "plans": [{"budget": b, "heads_pruned": sum(r is not None for layer in content["plans"][i]["keep"]
                                                           for _, r in layer),
                         "heads": sum(len(layer) for layer in content["plans"][i]["keep"]),
                         "kept_share_predicted": kept_share(content, i, written)} for i, b in enumerate(budgets)],
              "summary": summary.to_dict(orient="records")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
