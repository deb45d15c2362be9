"""The `probe` command: `probe run`, `probe show`, `probe report`, `probe bench`, `probe intervene`, `probe generate`,
`probe train`, `probe export`.

A user mistake (unknown model, bad flag value, missing or corrupt checkpoint) is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from probes.store import Run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """Bad user input: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): the problem, then where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _roles_text(layout) -> str:
    """' (encoder 0..24, decoder 25..34)' for SCD; '' for a model of one kind of block."""
    spans: dict[str, list[int]] = {}
    for layer in range(layout.depth):
        spans.setdefault(layout.role(layer), []).append(layer)
    if set(spans) == {"causal"}:
        return ""
    return " (" + ", ".join(f"{role} {v[0]}..{v[-1]}" for role, v in spans.items()) + ")"


def _layers(spec: str, depth: int, roles: str = "") -> list[int] | str:
    """'15' / '0,5,15' / 'all' -> block indices (or 'all'), checked against the model's depth."""
    accepted = f"comma-separated block indices in 0..{depth - 1}{roles}, or 'all'"
    if spec.strip() == "all":
        return "all"
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise UsageError(f"empty layer in {spec!r}; accepted: {accepted}")
    layers = []
    for part in parts:
        if not re.fullmatch(r"[+-]?\d+", part):
            raise UsageError(f"layer {part!r} is not an integer; accepted: {accepted}")
        layers.append(int(part))
    duplicates = sorted({layer for layer in layers if layers.count(layer) > 1})
    if duplicates:
        raise UsageError(f"layer {duplicates[0]} is given twice in {spec!r}; give each layer once")
    for layer in layers:
        if not 0 <= layer < depth:
            raise UsageError(f"layer {layer} is out of range; accepted: {accepted}")
    return layers


def _writable_out(out: Path, force: bool) -> None:
    """Refuse, before any work, an --out that exists (without --force) or cannot be written."""
    from probes.store import unwritable_reason

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory path for the run")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} already exists and is not empty; pass --force to replace it, or choose another --out")
    reason = unwritable_reason(out)
    if reason:
        raise UsageError(f"--out {out} cannot be written ({reason})")


def _default_out(model: str, layers: list[int] | str) -> Path:
    """reports/runs/MODEL-layer-15, MODEL-layers-0-5-15 or MODEL-layers-all."""
    name = Path(model).name.removesuffix(".safetensors")
    spec = "layers-all" if layers == "all" else ("layer-" if len(layers) == 1 else "layers-") + "-".join(map(str, layers))
    return Path("reports") / "runs" / f"{name}-{spec}"


def summary_table(run: Run) -> str:
    """One row per layer of a run: mean off-diagonal cross-step cosine, its minimum, attention share on
    earlier frames ("-" for the cosine of SCD encoder layers, which run once per frame)."""
    import pandas as pd

    metrics, capture = run.metrics, run.manifest.get("capture", [])
    by = metrics.groupby(["layer", "metric"]).value
    means, mins = by.mean().unstack(), by.min().unstack()
    table = pd.DataFrame(index=sorted(metrics.layer.unique()))
    table.index.name = "layer"
    roles = [run.role(layer) for layer in table.index]
    if set(roles) != {"causal"}:
        table["block"] = roles
    if "features" in capture:
        table["cross-step cosine (mean)"] = means.get("token_cosine_mean")
        table["cross-step cosine (min)"] = mins.get("token_cosine_min")
    if "attention" in capture:
        table["attention on earlier frames"] = means.get("attention_earlier")
    if "clip" in metrics:  # a merged sweep: the spread of each item's mean over the items
        spread = metrics.groupby(["layer", "metric", "clip", "seed"]).value.mean().groupby(["layer", "metric"]).std()
        spread = spread.unstack()
        for name, metric in (("cross-step cosine (mean)", "token_cosine_mean"), ("attention on earlier frames",
                                                                                 "attention_earlier")):
            if name in table and metric in spread:
                table[f"{name}, std over {len(run.manifest['sweep']['items'])} runs"] = spread[metric]
    shown = table.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else v)
    return shown.to_markdown(colalign=("right",) * (len(shown.columns) + 1), disable_numparse=True)  # "-": SCD encoder


def cmd_run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from probes import sweep
    from probes.adapters import layout_of, load_model
    from probes.probe import CAPTURES, MODES, Probe, ProbeError
    from probes.store import load_run
    from scd import VideoBenchmark, generate

    capture = [c.strip() for c in args.capture.split(",")]
    for c in capture:
        if c not in CAPTURES:
            raise UsageError(f"unknown capture kind {c!r}; accepted: {', '.join(CAPTURES)} (comma-separated)")
    if len(set(capture)) != len(capture):
        raise UsageError(f"--capture {args.capture!r} names a kind twice; accepted: {', '.join(CAPTURES)}")
    if args.mode not in MODES:
        raise UsageError(f"unknown --mode {args.mode!r}; accepted: {', '.join(MODES)}")
    clip_frames = args.clip_frames or args.context + args.frames
    if args.context >= clip_frames:
        raise UsageError(f"--context {args.context} is longer than the clip ({clip_frames} frames); "
                         f"accepted: 1..{clip_frames - 1}")
    if args.context + args.frames > clip_frames:
        raise UsageError(f"--context {args.context} + --frames {args.frames} needs {args.context + args.frames} frames "
                         f"but --clip-frames is {clip_frames}")
    clips = _indices(args.clip, "--clip", minimum=0)
    seeds = _indices(args.seed, "--seed")
    rank, world_size, local_rank = sweep.world()
    device = _device(args.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)  # one GPU per rank of the machine
    latent = args.model.startswith("diffusers:")
    options = {"latent_size": _latent_size(args.latent_size), "text_embeddings": _text_embeddings(args.text_embeddings)
               } if latent else {}
    model = load_model(args.model, device=device, dtype=DTYPES[args.dtype], **options)
    spec = args.layers if args.layers is not None else str(args.layer)
    layout = layout_of(model)
    layers = _layers(spec, layout.depth, _roles_text(layout))
    out = Path(args.out) if args.out else _default_out(args.model, layers)
    items = [(clip, seed) for clip in clips for seed in seeds]
    sharded = len(items) > 1 or world_size > 1
    command = "probe " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("probe") else None

    def probe_item(clip_index: int, seed: int, path: Path, quiet: bool) -> Path:
        if latent:  # seeded Gaussian latents stand in for a diffusers model's context: there is no ground truth
            generator = torch.Generator().manual_seed(clip_index)
            clip = torch.randn((clip_frames, model.channels, *model.latent_size), generator=generator)
            truth = None
        else:
            clip = VideoBenchmark("val", frames=clip_frames, size=model.config.frame_size).clip(clip_index)
            truth = clip[: args.context + args.frames]
        progress = tqdm(total=args.frames * args.steps, desc=f"probe {args.model}", unit="step", disable=quiet)

        def advance(frame: int, step: int | None, timestep: float) -> None:
            if step is not None:
                progress.set_postfix(frame=frame, refresh=False)
                progress.update()

        try:
            with Probe(model, layers, capture=capture, mode=args.mode, hook=args.hook, backend=args.backend) as probe:
                generate(model, clip[: args.context], args.frames, steps=args.steps, seed=seed, device=device,
                         dtype=DTYPES[args.dtype], callback=advance)
            progress.close()
            return probe.save(path, ground_truth=truth, force=args.force, split="latent noise" if latent else "val",
                              clip=clip_index, seed=seed, dtype=args.dtype, device=str(device), command=command)
        except ProbeError as e:
            raise UsageError(str(e)) from None

    if not sharded:
        _writable_out(out, args.force)
        run = probe_item(clips[0], seeds[0], out, args.quiet)
    else:
        with sweep.process_group(world_size):
            _writable_out(out, args.force)  # every rank: each refuses alone rather than leave the others waiting
            if rank == 0:
                if out.exists() and args.force:
                    shutil.rmtree(out)  # a sweep is replaced whole: no shard of an older one stays
                out.mkdir(parents=True, exist_ok=True)
            sweep.barrier(world_size)  # no rank writes before rank 0 has accepted the output directory
            with sweep.write_shard(out, rank, world_size) as (shard, written):
                for clip_index, seed in items[rank::world_size]:
                    probe_item(clip_index, seed, shard / sweep.item_name(clip_index, seed), args.quiet or rank > 0)
                    written.append({"clip": clip_index, "seed": seed, "run": sweep.item_name(clip_index, seed)})
            sweep.barrier(world_size)
        run = out
        if rank > 0:
            return
    if not args.quiet:  # the table of what was written, not a second computation of it
        print(summary_table(load_run(run)))
    print(f"wrote {run}")


def cmd_show(args: argparse.Namespace) -> None:
    from probes.store import load_run

    run = load_run(args.run)
    m = run.manifest
    items = m.get("sweep", {}).get("items")
    which = (f"{len(items)} runs (clips {sorted({i['clip'] for i in items})}, seeds {sorted({i['seed'] for i in items})})"
             if items else f"clip {m.get('clip')}, seed {m.get('seed')}")
    print(f"{m.get('model')} · layers {m.get('layers')} · frames {m.get('frames')} · {len(m.get('steps', []))} steps · "
          f"{which} · {m.get('mode')} mode")
    print(summary_table(run))


def cmd_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")  # the figures go into a file; a desktop backend would want a display
    from analyses.report import write_report

    print(f"wrote {write_report(args.runs, args.output, bench=args.bench, interventions=args.interventions)}")


def _indices(text: str, flag: str, minimum: int | None = None) -> list[int]:
    """'3' / '0-3' / '0,2,5' -> [3] / [0, 1, 2, 3] / [0, 2, 5]: the clips or seeds of a run or sweep."""
    accepted = "an integer, a range A-B or a comma-separated list" + (f", each >= {minimum}" if minimum is not None else "")
    values: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([+-]?\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UsageError(f"{flag} {text!r} is not valid; accepted: {accepted}")
        first, last = int(match[1]), int(match[2]) if match[2] else int(match[1])
        if last < first:
            raise UsageError(f"{flag} range {part.strip()!r} is empty; accepted: {accepted}")
        values += range(first, last + 1)
    if minimum is not None and min(values) < minimum:
        raise UsageError(f"{flag} {min(values)} is out of range; accepted: {accepted}")
    if len(set(values)) != len(values):
        raise UsageError(f"{flag} {text!r} names a value twice")
    return values


def _text_embeddings(path: str | None) -> torch.Tensor | None:
    """The tensor of a .safetensors file ("text_embeddings", or its only tensor): a diffusers model's prompt."""
    if path is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0]
        raise UsageError(f"--text-embeddings {path} cannot be read ({reason}); accepted: a .safetensors file") from None
    if "text_embeddings" in tensors:
        return tensors["text_embeddings"]
    if len(tensors) != 1:
        raise UsageError(f"--text-embeddings {path} holds {sorted(tensors)}; accepted: one tensor, or one named text_embeddings")
    return next(iter(tensors.values()))


def _latent_size(text: str) -> tuple[int, int]:
    """'8x8' -> (8, 8): the latent frame size a diffusers model is probed at."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"--latent-size {text!r} is not HxW; accepted: two positive integers, e.g. 60x104")
    return int(parts[0]), int(parts[1])


def _steps_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers >= 1, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> None:
    from analyses.bench import quality_table, speed_table, write_bench
    from scd.train import machine_description
    from scd.zoo import load_model

    device = _device(args.device)
    if args.frames < 2:
        raise UsageError(f"--frames {args.frames} is too few to time a frame-to-frame latency; accepted: >= 2")
    out = Path(args.out)
    _writable_out(out, args.force)
    if args.baseline == args.scd:
        raise UsageError(f"--baseline and --scd name the same model {args.scd!r}; give two models to compare")
    labels = [Path(name).name.removesuffix(".safetensors") for name in (args.baseline, args.scd)]
    if labels[0] == labels[1]:
        labels = [args.baseline, args.scd]
    names = {"baseline": labels[0], "other": labels[1]}
    models = {label: load_model(name) for label, name in zip(labels, (args.baseline, args.scd), strict=True)}
    sizes = {m.config.frame_size for m in models.values()}
    if len(sizes) != 1:
        raise UsageError(f"the two models generate frames of different sizes {sorted(sizes)}; accepted: models of one size")
    settings = [(steps, context) for steps in args.steps for context in args.context]
    progress = not args.quiet
    speed = speed_table(models, settings, frames=args.frames, repeats=args.repeats, device=device, progress=progress)
    quality = quality_table(models, clips=args.clips, samples=args.samples, steps=args.quality_steps,
                            device=device, progress=progress)
    info = {**names, "command": "probe bench " + " ".join(sys.argv[2:]) if sys.argv[0].endswith("probe") else "probe bench",
            "machine": machine_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "device": str(device), "frames": args.frames, "repeats": args.repeats, "clips": args.clips,
            "samples": args.samples, "quality_steps": args.quality_steps, "quality_context": 4, "quality_frames": 4,
            "configs": {name: m.get_config() for name, m in models.items()},
            "checkpoints": {name: getattr(m, "checkpoint", None) for name, m in models.items()}}
    write_bench(out, speed, quality, info)
    if progress:
        print((out / "bench.md").read_text())
    print(f"wrote {out}")


def _intervention_layers(text: str, flag: str, depth: int) -> list[int]:
    """'default' (the paper's depths 0, 5, ..., 25, 29, scaled to the model), 'none', or block indices."""
    if text == "none":
        return []
    if text == "default":
        return sorted({round(layer * (depth - 1) / 29) for layer in (0, 5, 10, 15, 20, 25, 29)})
    try:
        layers = _layers(text, depth)
    except UsageError as e:
        raise UsageError(f"{flag}: {e}; or 'default', 'none'") from None
    if layers == "all":
        return list(range(depth))
    return sorted(layers)


def cmd_intervene(args: argparse.Namespace) -> None:
    from analyses.interventions import InterventionError, intervention_table, write_interventions
    from scd.train import machine_description
    from scd.zoo import load_model

    device = _device(args.device)
    out = Path(args.out)
    _writable_out(out, args.force)
    if args.refresh is not None and args.refresh < 1:
        raise UsageError(f"--refresh {args.refresh} is not a step interval; accepted: >= 1")
    model = load_model(args.model, device=device)
    scd = hasattr(model, "decoder")
    if scd and args.knockout != "none":
        raise UsageError(f"--model {args.model} is an SCD model: knocking out its decoder's only past, the encoder "
                         "output of the frame before, is moot; accepted: --knockout none (reuse: its decoder layers)")
    depth = len(model.encoder.blocks) + len(model.decoder.blocks) if scd else len(model.blocks)
    reuse = _intervention_layers(args.reuse, "--reuse", depth)
    if scd and args.reuse == "default":  # the decoder's layers: the encoder runs once per frame already
        reuse = list(range(len(model.encoder.blocks), depth))
    settings = [("reuse", k) for k in reuse] + \
               [("knockout", k) for k in _intervention_layers(args.knockout, "--knockout", depth)]
    if not settings:
        raise UsageError("--reuse none and --knockout none leave nothing to measure; accepted: layer lists or 'default'")
    videos: dict = {}
    try:
        table = intervention_table(model, settings, clips=args.clips, context=args.context, frames=args.frames,
                                   steps=args.steps, seed=args.seed, refresh=args.refresh, device=device,
                                   progress=not args.quiet, keep=videos)
    except InterventionError as e:
        raise UsageError(str(e)) from None
    info = {"model": args.model, "checkpoint": getattr(model, "checkpoint", None), "depth": depth,
            "command": "probe intervene " + " ".join(sys.argv[2:]) if sys.argv[0].endswith("probe") else "probe intervene",
            "machine": machine_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "device": str(device), "clips": args.clips, "context": args.context, "frames": args.frames,
            "steps": args.steps, "seed": args.seed, "refresh": args.refresh}
    write_interventions(out, table, videos, info)
    if not args.quiet:
        print((out / "interventions.md").read_text())
    print(f"wrote {out}")


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
    from scd.train import TrainConfig, default_config, train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "family"}
    try:
        cfg = default_config(args.family, **values)
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
    from probes.backends import BACKENDS
    from probes.probe import CAPTURES, MODES
    from scd.train import TrainConfig
    from scd.zoo import SIZES

    parser = Parser(prog="probe", description="Probe causal video diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="probe a model while it generates: features and attention at every step")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--layer", default="15", help="one block index (default 15)")
    which.add_argument("--layers", default=None, help="comma-separated block indices, or 'all'")
    r.add_argument("--model", default="baseline", help="shipped name, checkpoint directory or .safetensors file")
    r.add_argument("--clip", default="0", help="val clip index (diffusers models: seed of the context latents); "
                   "several (0-3 or 0,2,5) make a sweep, sharded over the ranks of torchrun")
    r.add_argument("--latent-size", default="8x8", help="diffusers models: latent frame size HxW")
    r.add_argument("--text-embeddings", default=None,
                   help="diffusers models: a .safetensors file of the prompt's embeddings [tokens, text_dim] (default: zeros)")
    r.add_argument("--context", type=_positive, default=4, help="context frames given to the model")
    r.add_argument("--frames", type=_positive, default=4, help="frames to generate (each one is probed)")
    r.add_argument("--clip-frames", type=_positive, default=None, help="frames of the val clip (default context + frames)")
    r.add_argument("--steps", type=_positive, default=50, help="denoising steps per frame")
    r.add_argument("--seed", default="0", help="sampling seed; several (0-3 or 0,1) make a sweep, as --clip")
    r.add_argument("--capture", default=",".join(CAPTURES), help=f"comma-separated: {', '.join(CAPTURES)}")
    r.add_argument("--mode", default="full", help=f"{' or '.join(MODES)}: keep every token (float16 on disk) or "
                   "only running reductions and a token subsample")
    r.add_argument("--hook", default="hook_resid_post", help="the block HookPoint recorded as features")
    r.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how the model is read (default: hookpoints; nnsight for diffusers models)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    r.add_argument("--out", default=None, help="run directory (default reports/runs/MODEL-layer-15)")
    r.add_argument("--force", action="store_true", help="replace an existing run directory")
    r.add_argument("--quiet", action="store_true", help="no progress bar or table, only the run's path")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("show", help="print the summary table of a run directory")
    w.add_argument("run", help="run directory written by probe run")
    w.set_defaults(func=cmd_show)

    p = sub.add_parser("report", help="one self-contained HTML report (claims, figures) from run directories")
    p.add_argument("runs", nargs="+", help="run directories written by probe run (e.g. baseline and SCD)")
    p.add_argument("-o", "--output", default="reports/report.html", help="HTML file to write")
    p.add_argument("--bench", default=None, help="a directory written by probe bench, to include its tables")
    p.add_argument("--interventions", default=None, help="a directory written by probe intervene, to include it")
    p.set_defaults(func=cmd_report)

    i = sub.add_parser("intervene", help="causal tests: feature reuse across steps and cross-frame attention knockout")
    i.add_argument("--model", default="baseline", help="a causal baseline: shipped name or checkpoint path")
    i.add_argument("--reuse", default="default",
                   help="layers K: blocks 0..K run only at refresh steps, K's output reused (default 0,5,10,15,20,25,29; 'none')")
    i.add_argument("--knockout", default="default",
                   help="layers K: blocks K.. attend only within the frame (default 0,5,10,15,20,25,29; 'none')")
    i.add_argument("--refresh", type=int, default=None, help="reuse: recompute blocks 0..K every m steps (default: step 0 only)")
    i.add_argument("--clips", type=_positive, default=16, help="val clips")
    i.add_argument("--context", type=_positive, default=4, help="context frames")
    i.add_argument("--frames", type=_positive, default=4, help="generated frames per clip")
    i.add_argument("--steps", type=_positive, default=50, help="denoising steps per frame")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--device", default="cpu")
    i.add_argument("--out", default="reports/interventions", help="directory for interventions.parquet/.md/.json, frames.npz")
    i.add_argument("--force", action="store_true", help="replace an existing --out")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_intervene)

    b = sub.add_parser("bench", help="SCD vs baseline in one process: latency, frames/s, memory, FLOPs, PSNR/SSIM")
    b.add_argument("--baseline", default="baseline", help="the causal baseline (shipped name or checkpoint path)")
    b.add_argument("--scd", default="scd", help="the model compared with it (shipped name or checkpoint path)")
    b.add_argument("--steps", type=_steps_list, default=[50, 4], help="denoising steps per frame (comma-separated)")
    b.add_argument("--context", type=_steps_list, default=[4, 16], help="context frames (comma-separated)")
    b.add_argument("--frames", type=_positive, default=8, help="frames generated per timed run (>= 2)")
    b.add_argument("--repeats", type=_positive, default=3, help="timed runs per model and setting, interleaved")
    b.add_argument("--clips", type=_positive, default=32, help="val clips for PSNR / SSIM")
    b.add_argument("--samples", type=_positive, default=4, help="samples per clip for best-of-k quality")
    b.add_argument("--quality-steps", type=_positive, default=50, help="denoising steps for the quality table")
    b.add_argument("--device", default="cpu")
    b.add_argument("--out", default="reports/bench", help="directory for bench.md, speed/quality.parquet, bench.json")
    b.add_argument("--force", action="store_true", help="replace an existing --out")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

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
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"default {f.default} (or the family's, scd.train.FAMILY_DEFAULTS)")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            t.add_argument(flag, type=kind, default=None,
                           help=f"default {f.default} (or the family's, scd.train.FAMILY_DEFAULTS)")
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
    from probes.store import RunError
    from scd.zoo import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UsageError, CheckpointError, RunError) as e:
        print(f"probe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"probe {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
