"""The `probe` command: `probe generate`, `probe train`, `probe export`.

A user mistake (unknown model, bad flag value, missing or corrupt checkpoint) is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """Bad user input: reported as one line, exit code 2."""


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; accepted: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; accepted: cpu")
    return device


def cmd_generate(args: argparse.Namespace) -> None:
    from scd import VideoBenchmark, generate, load_model
    from scd.evaluate import frame_quality, save_strip

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o must name a .png file, got {str(out)!r}")
    device = _device(args.device)
    model = load_model(args.model, device=device, dtype=DTYPES[args.dtype])
    bench = VideoBenchmark("val", frames=args.context + args.frames, size=model.config.frame_size)
    clip = bench.clip(args.clip)
    video = generate(model, clip[: args.context], args.frames, steps=args.steps, seed=args.seed, device=device,
                     dtype=DTYPES[args.dtype])
    psnr, ssim = frame_quality(video[args.context:], clip[args.context:])
    title = f"{args.model} · val clip {args.clip} · {args.steps} steps · seed {args.seed}"
    save_strip(video, clip, args.context, out, title=title)
    if not args.quiet:
        for i, (p, s) in enumerate(zip(psnr.tolist(), ssim.tolist(), strict=True)):
            print(f"frame {args.context + i}: PSNR {p:6.2f} dB  SSIM {s:.3f}")
        print(f"wrote {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from scd.train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "family"}
    cfg = TrainConfig(family=args.family, **values)
    try:
        summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet, until=args.until)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"trained {cfg.family}/{cfg.size} to step {summary['steps']} (final loss {summary['final_loss']:.4f}); "
          f"load it with load_model({str(args.out)!r})")


def cmd_export(args: argparse.Namespace) -> None:
    from scd.evaluate import export_checkpoint

    card = export_checkpoint(args.run, args.name, clips=args.clips, steps=args.steps, force=args.force,
                             weights=args.weights)
    print(f"wrote {card}")


def build_parser() -> argparse.ArgumentParser:
    from scd.train import TrainConfig
    from scd.zoo import SIZES

    parser = argparse.ArgumentParser(prog="probe", description="Probe causal video diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate frames after context frames and write a PNG strip")
    g.add_argument("--model", default="baseline", help="shipped name, checkpoint directory or .safetensors file")
    g.add_argument("--clip", type=_nonnegative, default=0, help="val clip index")
    g.add_argument("--context", type=_positive, default=4, help="context frames given to the model")
    g.add_argument("--frames", type=_positive, default=4, help="frames to generate")
    g.add_argument("--steps", type=_positive, default=50, help="denoising steps per frame")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    g.add_argument("-o", "--output", default="generated.png", help="PNG file to write")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a model on the procedural benchmark (resumable)")
    t.add_argument("family", choices=sorted(SIZES), help="model family")
    t.add_argument("--out", required=True, help="run directory for checkpoints and the loss log")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--until", type=_positive, default=None, help="end this sitting after this step (resume later)")
    t.add_argument("--quiet", action="store_true")
    for f in fields(TrainConfig):
        if f.name == "family":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            t.add_argument(flag, type=kind, default=f.default)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="ship a trained run as scd/checkpoints/NAME (float16) with a model card")
    e.add_argument("run", help="training run directory")
    e.add_argument("--name", required=True, help="checkpoint name, e.g. baseline")
    e.add_argument("--clips", type=_positive, default=32, help="val clips for the model card's quality table")
    e.add_argument("--steps", type=_positive, default=50, help="denoising steps for the validation")
    e.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                   help="EMA or raw weights; auto: the lower loss on unseen train clips (never val)")
    e.add_argument("--force", action="store_true", help="replace an existing shipped checkpoint")
    e.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `probe` console script."""
    from scd.zoo import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UsageError, CheckpointError) as e:
        print(f"probe {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
