"""`probe generate`, `probe train`, `probe export`, `probe convert`: make videos, train models, ship and convert
checkpoints."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from probe_cli.checks import UsageError, estimate_fits, output, placement


def cmd_generate(args: argparse.Namespace) -> None:
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o {str(out)!r} is not a .png file; accepted: a path ending in .png")
    output(out, "strip", args.force, flag="-o")
    where = placement(args.device, args.dtype)  # checked once: the loader and generate trust it
    from scd import VideoBenchmark, generate, load_model
    from scd.evaluate import frame_quality, save_strip
    from scd.memory import generation_bytes

    model = load_model(args.model, device=where)
    c = model.config
    estimate_fits(generation_bytes(c.width, c.depth, c.heads, c.tokens_per_frame, args.context + args.frames)
                  + (args.context + args.frames) * 3 * c.frame_size ** 2 * 8 * 3, "this generation")
    bench = VideoBenchmark("val", frames=args.context + args.frames, size=c.frame_size, scene=args.scene)
    clip = bench.clip(args.clip)
    video = generate(model, clip[: args.context], args.frames, steps=args.steps, seed=args.seed, device=where)
    psnr, ssim = frame_quality(video[args.context:], clip[args.context:])
    title = f"{args.model} · val clip {args.clip} · {args.steps} steps · seed {args.seed}"
    save_strip(video, clip, args.context, out, title=title)
    if not args.quiet:
        for i, (p, s) in enumerate(zip(psnr.tolist(), ssim.tolist(), strict=True)):
            print(f"frame {args.context + i}: PSNR {p:6.2f} dB  SSIM {s:.3f}")
        print(f"wrote {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from scd.training.config import TrainConfig, default_config

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "family"}
    cfg = default_config(args.family, **values)
    out = Path(args.out)
    if not args.resume and not (out.is_dir() and any(out.iterdir()) and not args.force):
        output(out, "training", args.force)  # before torch is imported: a refusal comes at once (train checks again)
    from scd.training.train import train  # it refuses a bad directory, size or memory before making anything

    summary = train(cfg, out, resume=args.resume, progress=not args.quiet, until=args.until, force=args.force)
    print(f"trained {cfg.family}/{cfg.size} to step {summary['steps']} (final loss {summary['final_loss']:.4f}); "
          f"load it with load_model({str(out)!r})")


def cmd_export(args: argparse.Namespace) -> None:
    from scd.checkpoint_files import check_export

    check_export(args.run, args.name, args.weights, args.force)  # before torch is imported: a refusal comes at once
    from scd.evaluate import export_checkpoint

    card = export_checkpoint(args.run, args.name, clips=args.clips, steps=args.steps, force=args.force,
                             weights=args.weights, progress=not args.quiet)
    print(f"wrote {card}")


def cmd_convert(args: argparse.Namespace) -> None:
    source = Path(args.source)
    if not (source.is_dir() or source.name.endswith(".index.json") or
            (source.suffix in (".safetensors", ".pt", ".pth") and source.is_file())):
        raise UsageError(f"{source} is not a checkpoint; accepted: an existing .safetensors, .pt or .pth file, a sharded "
                         "checkpoint's .index.json, or a directory of .safetensors shards")
    if args.lora is not None and not Path(args.lora).is_file():
        raise UsageError(f"--lora {args.lora} is not a file; accepted: a LoRA adapter file (.safetensors, .pt or .pth)")
    if args.lora_alpha is not None and args.lora is None:
        raise UsageError("--lora-alpha scales a LoRA; accepted: --lora-alpha with --lora FILE, or neither")
    output(args.out, "converted", args.force)
    from scd.wan.convert import convert

    notes: list[str] = []  # what was read and chosen: said after the work, so that a refusal stays one line
    out = convert(source, args.out, heads=args.heads, frames_per_block=args.frames_per_block, ema=args.ema,
                  force=args.force, notes=notes, lora=args.lora, lora_alpha=args.lora_alpha)
    if not args.quiet:
        for note in notes:
            print(f"note: {note}")
    print(f"wrote {out}")
