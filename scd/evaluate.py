"""Validation quality of a model against two trivial predictors, PNG strips, and shipping a checkpoint.

Quality is PSNR and SSIM (torchmetrics) of generated frames against the benchmark's exact
ground truth, on frames in [-1, 1] (predictions clamped to that range). The two reference
predictors any video model must beat: copy the last context frame, and extrapolate the last two
context frames linearly.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from scd.checkpoint_files import check_export, export_targets
from scd.data import VideoBenchmark, clip_seed
from scd.files import (
    GENERATOR,
    atomic_file,
    discard,
    recover,
    temporary_sibling,
)
from scd.progress import progress as progress_bar
from scd.sampling import generate
from scd.zoo import CHECKPOINT_DIR, load_model, save_model

DATA_RANGE = (-1.0, 1.0)


def frame_quality(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame PSNR (dB) and SSIM of pred vs target, both [N, C, H, W] in [-1, 1]."""
    pred, target = pred.float().clamp(*DATA_RANGE), target.float()
    psnr = peak_signal_noise_ratio(pred, target, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=DATA_RANGE, reduction="none")
    return psnr, ssim


def copy_last(context: torch.Tensor, frames: int) -> torch.Tensor:
    """Predict every future frame as the last context frame: [B, T, ...] -> [B, frames, ...]."""
    return context[:, -1:].expand(-1, frames, *context.shape[2:])


def extrapolate_linearly(context: torch.Tensor, frames: int) -> torch.Tensor:
    """Pixel-wise linear extrapolation of the last two context frames, clamped to [-1, 1]."""
    last, delta = context[:, -1:], context[:, -1:] - context[:, -2:-1]
    steps = torch.arange(1, frames + 1, dtype=context.dtype).view(1, -1, *[1] * (context.dim() - 2))
    return (last + steps * delta).clamp(*DATA_RANGE)


def validate(
    model: torch.nn.Module, clips: int = 32, context: int = 4, frames: int = 4, steps: int = 50, seed: int = 0,
    device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True, scene: str = "sprites",
) -> pd.DataFrame:
    """Tidy table (method, clip, frame, psnr, ssim) on val clips 0..clips-1 of `scene` for the model and the references."""
    bench = VideoBenchmark("val", frames=context + frames, size=model.config.frame_size, scene=scene)
    rows = []
    for start in progress_bar(range(0, clips, batch_size), desc="validate", disable=not progress):
        index = list(range(start, min(clips, start + batch_size)))
        truth = bench.batch(index)
        predictions = {
            "model": generate(model, truth[:, :context], frames, steps=steps, seed=seed + start, device=device)[:, context:],
            "copy last frame": copy_last(truth[:, :context], frames),
            "extrapolate linearly": extrapolate_linearly(truth[:, :context], frames),
        }
        for method, pred in predictions.items():
            psnr, ssim = frame_quality(pred.flatten(0, 1), truth[:, context:].flatten(0, 1))
            psnr, ssim = psnr.view(len(index), frames).tolist(), ssim.view(len(index), frames).tolist()
            rows += [{"method": method, "clip": clip, "frame": context + k, "psnr": psnr[j][k], "ssim": ssim[j][k]}
                     for j, clip in enumerate(index) for k in range(frames)]
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR and SSIM per method over all clips and generated frames, and per generated frame."""
    overall = table.groupby("method", sort=False)[["psnr", "ssim"]].mean()
    per_frame = table.pivot_table(index="method", columns="frame", values="psnr", sort=False)
    per_frame.columns = [f"psnr frame {c}" for c in per_frame.columns]
    return overall.join(per_frame)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, C, H, W] in [-1, 1] -> uint8 [T, H, W, C]."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_strip(video: torch.Tensor, truth: torch.Tensor, context: int, path: str | Path, title: str = "") -> Path:
    """PNG with two rows (model: context + generated; ground truth), one column per frame."""
    from matplotlib.figure import Figure  # not pyplot: a file only, whatever the backend (a notebook's included)

    T = video.shape[0]
    fig = Figure(figsize=(1.3 * T, 3.0))
    axes = fig.subplots(2, T, squeeze=False)
    for row, (label, frames) in enumerate([("model", video), ("ground truth", truth[:T])]):
        for col, image in enumerate(to_uint8(frames)):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{'context' if col < context else 'generated'} {col}", fontsize=7)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:  # a failed write leaves neither a half PNG nor a temporary file
        fig.savefig(tmp, dpi=120, format="png", metadata={"Software": GENERATOR})
    return path


def training_command(run: Path) -> str:
    """The `probe train` command that reproduces a run, from its train.json."""
    from scd.training.train import TrainConfig

    saved = json.loads((run / "train.json").read_text())
    flags = []
    for f in fields(TrainConfig):
        value = saved.get(f.name, f.default)  # a setting added since the run was trained: its default then
        if f.name == "family" or value == f.default and f.name not in ("size", "steps"):
            continue
        flag = "--" + f.name.replace("_", "-")
        flags.append((flag if value else "--no-" + flag[2:]) if isinstance(value, bool) else f"{flag} {value}")
    return f"probe train {saved['family']} {' '.join(flags)} --out {run}"


def export_checkpoint(run: str | Path, name: str, clips: int = 32, steps: int = 50, force: bool = False,
                      weights: str = "auto", progress: bool = True) -> Path:
    """Ship a training run as scd/checkpoints/{name}.safetensors (float16), .json, .md card and .validation.csv.

    `weights`: "ema", "raw", or "auto" (the one with the lower loss on unseen train-split clips,
    never on val). The card records the training command, data seeds, iterations, wall time,
    hardware, final loss, that choice, and the validation table of the float16 weights as shipped.
    Files are replaced only with `force`.
    """
    from scd.training.train import WEIGHTS, dev_loss, load_trained

    run = check_export(run, name, weights, force, CHECKPOINT_DIR)
    targets = export_targets(name, CHECKPOINT_DIR)
    candidates = {w: load_trained(run, w) for w in WEIGHTS}
    dev = {w: dev_loss(m, run) for w, m in candidates.items()}
    chosen = min(dev, key=dev.get) if weights == "auto" else weights
    recover(CHECKPOINT_DIR / name)  # signed temporaries of an export killed earlier
    tmp = temporary_sibling(CHECKPOINT_DIR / name)  # a signed wrapper: a kill leaves nothing the next export keeps
    try:
        path = save_model(candidates[chosen], tmp / f"{name}.safetensors", dtype=torch.float16)
        shipped = load_model(path)
        scene = json.loads((run / "train.json").read_text()).get("scene", "sprites")  # validated on the scene trained on
        table = validate(shipped, clips=clips, steps=steps, scene=scene, progress=progress)
        summary = summarize(table)
        card = _model_card(run, name, shipped, summary, clips, steps, path, chosen, dev)
        (tmp / f"{name}.md").write_text(card)
        table.to_csv(tmp / f"{name}.validation.csv", index=False)
        with atomic_file(run / "validation.csv") as csv:
            table.to_csv(csv, index=False)
        _replace_together(tmp, targets)
    finally:
        discard(tmp)
    return targets[2]


def _replace_together(tmp: Path, targets: list[Path]) -> None:
    """Put the new files in `tmp` at `targets` as one set: the old ones go aside into `tmp` first, and any failure
    (a full disk, an I/O error) puts them back, so the set is the old one or the new one. Weights first: a kill
    between the renames leaves a config whose sha256 names other weights, which load_model refuses in one line,
    never a silent mix."""
    aside: list[Path] = []
    placed: list[Path] = []
    try:
        for target in targets:
            if target.exists():
                os.replace(target, tmp / f"old-{target.name}")
                aside.append(target)
        for target in targets:
            os.replace(tmp / target.name, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        for target in aside:
            os.replace(tmp / f"old-{target.name}", target)
        raise


def _decoder_lr(train_cfg: dict) -> str:
    scale = train_cfg.get("decoder_lr_scale", 1.0)
    return f", decoder lr x{scale}" if scale != 1.0 else ""


def _compute(config: dict, train_cfg: dict, steps: int) -> str:
    """Analytic training FLOPs of the run, and of the shipped baseline's run when this is another model."""
    from scd.flops import training_flops
    from scd.training.train import default_config

    per_step = training_flops(config, train_cfg["frames"], train_cfg["batch_size"])
    text = f"{steps} steps x {per_step / 1e9:.0f} GFLOP = {steps * per_step / 1e15:.2f} PFLOP (`scd.flops.training_flops`)"
    baseline_config = CHECKPOINT_DIR / "baseline.json"
    if config["family"] != "baseline" and baseline_config.exists():
        baseline = {k: v for k, v in json.loads(baseline_config.read_text()).items() if k not in ("dtype", "sha256")}
        b_cfg = default_config("baseline")  # what the shipped baseline was trained with (its card)
        b_steps = b_cfg.steps
        b_flops = b_steps * training_flops(baseline, b_cfg.frames, b_cfg.batch_size)
        text += (f"; the shipped baseline: {b_steps} steps x {b_flops / b_steps / 1e9:.0f} GFLOP = "
                 f"{b_flops / 1e15:.2f} PFLOP, so this run used {steps * per_step / b_flops:.2f}x its compute")
    return text + "."


def _model_card(run: Path, name: str, model: torch.nn.Module, summary: pd.DataFrame, clips: int, steps: int,
                weights: Path, chosen: str, dev: dict[str, float]) -> str:
    train_cfg = json.loads((run / "train.json").read_text())
    log = list(csv.DictReader(open(run / "loss.csv")))
    last = [float(r["loss"]) for r in log[-100:]]
    first_clip, last_clip = 0, train_cfg["steps"] * train_cfg["batch_size"] - 1
    params = sum(p.numel() for p in model.parameters())
    sittings = (run / "machines.txt").read_text().splitlines() if (run / "machines.txt").exists() else []
    machines = "; ".join(sorted({line.split(": ", 1)[1] for line in sittings})) or "(not recorded)"
    model_row = summary.loc["model"]
    gaps = "\n".join(f'Model minus "{m}": {model_row.psnr - summary.loc[m].psnr:+.2f} dB PSNR, '
                      f'{model_row.ssim - summary.loc[m].ssim:+.3f} SSIM.' for m in ("copy last frame", "extrapolate linearly"))
    table = summary.reset_index().rename(columns={"method": "predictor", "psnr": "PSNR (dB)", "ssim": "SSIM"})
    config = model.get_config()
    blocks = f"{model.config.depth} blocks"
    if config["family"] == "scd":
        blocks += f" ({model.config.encoder_depth} causal encoder + {model.config.decoder_depth} decoder)"
    return f"""# Model card: `{name}`

{model.__class__.__name__} ({config['family']}), {params / 1e6:.2f} M parameters,
{blocks}, width {model.config.width}, {model.config.heads} heads,
{model.config.tokens_per_frame} tokens per {model.config.frame_size}x{model.config.frame_size} frame.
Weights: `{name}.safetensors`, float16, sha256 `{json.loads(weights.with_suffix('.json').read_text())['sha256']}`.
Shipped: the **{chosen}** weights of the run. Flow-matching loss on 64 train-split clips the run never saw
(a dev set, disjoint from val): EMA {dev['ema']:.4f}, raw {dev['raw']:.4f}.

## Training
- Command: `{training_command(run)}`
- Objective: flow matching (velocity = noise - data), one timestep per frame (diffusion forcing),
  logit-normal sigma (std {train_cfg['logit_normal_std']}), clean-context ratio {train_cfg['clean_context_ratio']},
  AdamW lr {train_cfg['lr']} ({train_cfg['warmup']} warm-up steps, cosine to x{train_cfg['min_lr_ratio']}),
  gradient clip {train_cfg['grad_clip']}, EMA {train_cfg['ema_decay']},
  bfloat16 autocast: {train_cfg['bf16']}{_decoder_lr(train_cfg)}.
- Compute: {_compute(config, train_cfg, len(log))}
- Data: procedural train split, clips of {train_cfg['frames']} frames, clip indices {first_clip}-{last_clip}
  (seeds {clip_seed('train', first_clip)}-{clip_seed('train', last_clip)}, even seeds only; val uses odd seeds), each seen once.
- Iterations: {len(log)} steps of batch {train_cfg['batch_size']}; wall time {float(log[-1]['seconds']) / 3600:.2f} h on
  {machines}.
- Final loss (mean of the last {len(last)} steps): {np.mean(last):.4f}.

## Validation
{clips} val clips (indices 0-{clips - 1}), 4 context frames, 4 generated frames, {steps} Euler steps per frame,
seed 0; PSNR and SSIM of the generated frames against ground truth, averaged over clips and frames.

{table.to_markdown(index=False, floatfmt='.3f')}

{gaps}

Reproduce: `probe export {run} --name {name} --clips {clips} --steps {steps} --weights {chosen} --force`.
"""
