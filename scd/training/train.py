"""Flow-matching training with per-frame timesteps (diffusion forcing), resumable.

Every frame of a clip gets its own noise level sigma ~ logit-normal; a share of frames
(`clean_context_ratio`) is kept clean (sigma = 0) so that the model sees the inference regime,
clean past frames and a noisy current one. SCD needs no such share: its encoder always reads the
clean clip, and its decoder denoises every frame of the clip in parallel from that one encoder
pass (`probe train scd` sets the ratio to 0 and the decoder's learning rate to 2x, as the paper). The
loss is the MSE between the predicted velocity and noise - data on the noisy frames. Batches and
noise are functions of the step index, so a resumed run continues exactly where it stopped.
Everything is saved as safetensors (optimizer included).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scd.checkpoint_files import WEIGHTS
from scd.data import VideoBenchmark
from scd.files import OutputError, atomic_file, check_output, discard, input_path, replace, temporary_sibling
from scd.flops import tokens_per_frame
from scd.progress import progress as progress_bar
from scd.training.config import FAMILY_DEFAULTS, TrainConfig, TrainConfigError, default_config
from scd.zoo import SIZES, build_model, save_model

__all__ = ["FAMILY_DEFAULTS", "TrainConfig", "TrainConfigError", "default_config", "train", "load_trained",
           "dev_loss", "machine_description", "trained_steps"]


def model_config(cfg: TrainConfig) -> dict:
    if cfg.family not in SIZES:
        raise TrainConfigError(f"unknown model family {cfg.family!r}; accepted: {', '.join(SIZES)}")
    sizes = SIZES[cfg.family]
    if cfg.size not in sizes:
        raise TrainConfigError(f"unknown {cfg.family} size {cfg.size!r}; accepted: {', '.join(sizes)}")
    config = {"family": cfg.family, **asdict(sizes[cfg.size])}
    if config["channels"] != 3 or config.get("frame_width", 0) not in (0, config["frame_size"]):
        trainable = ", ".join(name for name, size in sizes.items() if size.channels == 3 and not size.frame_width)
        raise TrainConfigError(f"{cfg.family} size {cfg.size!r} takes {config['channels']}-channel latents, not the benchmark's "
                               f"square RGB frames (it is for speed at scale, with random weights); accepted: {trainable}")
    if cfg.frame_local_blocks:
        if cfg.family != "baseline":
            raise TrainConfigError(f"frame_local_blocks is a baseline setting (SCD's decoder already sees no other frame); "
                                   f"accepted: 0 for {cfg.family}")
        config["frame_local_blocks"] = cfg.frame_local_blocks
    if cfg.bidirectional_steps and cfg.family != "baseline":
        raise TrainConfigError("bidirectional_steps is a baseline setting (SCD's encoder is causal by design); accepted: 0 for "
                               f"{cfg.family}")
    if cfg.restart_schedule and not 0 < cfg.bidirectional_steps < cfg.steps:
        raise TrainConfigError("restart_schedule restarts the schedule at the causal fine-tune; accepted: with "
                               f"bidirectional_steps in 1..{cfg.steps - 1}")
    if cfg.bidirectional_steps > cfg.steps:
        raise TrainConfigError(f"bidirectional_steps {cfg.bidirectional_steps} is more than steps {cfg.steps}; accepted: "
                               f"0..{cfg.steps} (the rest is the causal fine-tune)")
    return config


def machine_description() -> str:
    """CPU model, cores, torch threads and version: what a wall time was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _initial_weights(cfg: TrainConfig, config: dict) -> dict[str, torch.Tensor]:
    """The weights `cfg.init` names, refused (TrainConfigError) unless its architecture is the one being trained;
    the attention mask (`frame_local_blocks`) may differ: changing it is what a fine-tune is for."""
    from scd.zoo import CheckpointError, load_model

    try:
        source = load_model(cfg.init)
    except CheckpointError as e:
        raise TrainConfigError(f"init {cfg.init!r}: {e}") from None
    theirs = {k: v for k, v in source.get_config().items() if k != "frame_local_blocks"}
    ours = {k: v for k, v in asdict(build_model(config, device="meta").config).items() if k != "frame_local_blocks"}
    if theirs != {"family": config["family"], **ours}:
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != {"family": config["family"], **ours}.get(k))
        raise TrainConfigError(f"init {cfg.init!r} is another architecture than {cfg.family}/{cfg.size} (differs in "
                               f"{', '.join(changed)}); accepted: a checkpoint of the size being trained")
    return {k: v.float() for k, v in source.state_dict().items()}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio; with `restart_schedule`, the bidirectional phase
    and the causal fine-tune are each scheduled so (the fine-tune as a causal run of its length from scratch)."""
    steps = cfg.steps
    if cfg.restart_schedule and cfg.bidirectional_steps:
        phase = cfg.bidirectional_steps
        step, steps = (step, phase) if step < phase else (step - phase, cfg.steps - phase)
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(model: nn.Module, clips: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
                       bidirectional: bool = False) -> torch.Tensor:
    """Diffusion-forcing flow-matching loss on clips [B, F, C, H, W]; `bidirectional`: every frame sees the whole clip."""
    B, Fr = clips.shape[:2]
    sigma = torch.sigmoid(torch.randn(B, Fr, generator=generator) * cfg.logit_normal_std)
    noisy = torch.rand(B, Fr, generator=generator) >= cfg.clean_context_ratio
    sigma = torch.where(noisy, sigma, torch.zeros_like(sigma))
    noise = torch.randn(clips.shape, generator=generator)
    s = sigma[:, :, None, None, None]
    x_t = (1 - s) * clips + s * noise
    separable = cfg.family == "scd"  # the encoder reads the clean clip, the decoder the noised one
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16), warnings.catch_warnings():
        # rms_norm under autocast: "cannot dispatch to fused implementation", i.e. slower, not wrong.
        warnings.filterwarnings("ignore", "Mismatch dtype between input and weight", UserWarning)
        velocity = (model(x_t, sigma * 1000, clean=clips) if separable
                    else model(x_t, sigma * 1000, bidirectional=True) if bidirectional else model(x_t, sigma * 1000))
    err = (velocity.float() - (noise - clips)).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    return (err * noisy).sum() / noisy.sum().clamp(min=1)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups, each with an `lr_scale`: SCD's decoder at `decoder_lr_scale`, everything else at 1."""
    scaled = model.decoder_parameters()
    if scaled is None or cfg.decoder_lr_scale == 1.0:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    decoder = {id(p) for p in scaled}
    rest = [p for p in model.parameters() if id(p) not in decoder]
    return [{"params": rest, "lr_scale": 1.0},
            {"params": [p for p in model.parameters() if id(p) in decoder], "lr_scale": cfg.decoder_lr_scale}]


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of one part of a train state ("model.", "ema.", "optim."), prefix removed."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, json.dumps(state["param_groups"])


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def save_train_state(path: Path, step: int, model: nn.Module, ema: AveragedModel, optimizer: torch.optim.Optimizer,
                     cfg: TrainConfig) -> None:
    """Everything needed to resume, in one safetensors file (written atomically)."""
    tensors, groups = _optimizer_tensors(optimizer)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    with atomic_file(path) as tmp:  # a kill or a full disk leaves the previous checkpoint
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={"step": str(step), "param_groups": groups, "train_config": json.dumps(asdict(cfg))})


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          until: int | None = None, force: bool = False) -> dict:
    """Train (or resume) into `out_dir`; returns a summary. Writes `model.safetensors` + `config.json`
    (EMA weights, loadable with `load_model(out_dir)`), `train_state.safetensors`, `loss.csv`, `train.json`.

    `until` ends this sitting after that step (checkpointed) without changing the schedule, so a long
    run can be trained in several sittings with `resume=True`; the result equals one uninterrupted run.
    `force` starts over where a training directory is: the new run is trained in a hidden sibling and
    swapped in at the end of the sitting, so a killed sitting leaves the old run as it was. Everything
    is checked (the config, the size, the memory, the directory) before a directory is made; a refusal
    is a TrainConfigError (a ValueError) naming the accepted values.
    """
    from scd.memory import NotEnoughMemory, check_fits, training_bytes

    out = input_path(out_dir, "out_dir", "a path ending in a new name, or a training directory", TrainConfigError)
    if not isinstance(cfg, TrainConfig):
        raise TrainConfigError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if until is not None and (not isinstance(until, int) or isinstance(until, bool) or until < 1):
        raise TrainConfigError(f"until = {until!r} is not accepted; accepted: a step >= 1, or None")
    if resume and force:
        raise TrainConfigError("resume continues a training directory and force replaces it; accepted: one of them")
    state_path = out / "train_state.safetensors"
    if resume and not state_path.is_file():
        raise TrainConfigError(f"nothing to resume: {out} holds no training run to continue (no {state_path.name}); "
                               "accepted: a directory probe train wrote, or no --resume to start one")
    if not resume:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise TrainConfigError(f"{out} already holds files; pass --resume to continue a training run, or --force to "
                                   "replace one")
        try:
            check_output(out, "training", force)
        except OutputError as e:
            raise TrainConfigError(str(e)) from None
    try:
        config = model_config(cfg)
    except ValueError as e:
        raise TrainConfigError(str(e)) from None
    initial = _initial_weights(cfg, config) if cfg.init else None
    parameters = sum(p.numel() for p in build_model(config, device="meta").parameters())
    depth = config.get("depth", config.get("encoder_depth", 0) + config.get("decoder_depth", 0))
    tokens = tokens_per_frame(config)
    try:
        check_fits(training_bytes(config["width"], depth, config["heads"], tokens, cfg.frames, cfg.batch_size, parameters),
                   "one training step")
    except NotEnoughMemory as e:
        raise TrainConfigError(str(e)) from None
    final = out
    if not resume:  # a new run is trained in a marked hidden sibling and put in place at the end of the sitting,
        out.parent.mkdir(parents=True, exist_ok=True)  # so a kill or a full disk leaves the old run, or nothing
        out = temporary_sibling(out)
        state_path = out / "train_state.safetensors"  # the new run's state goes with it, not into the run it replaces
    callers_threads = torch.get_num_threads()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        torch.manual_seed(cfg.seed)  # the initial weights are part of the run
        model = build_model(model_config(cfg))
        if initial is not None:  # a fine-tune: the same architecture, maybe with another attention mask
            model.load_state_dict(initial)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(0.9, 0.99))
        start, elapsed = 0, 0.0
        if resume:
            from safetensors import safe_open
            with safe_open(state_path, "pt") as f:
                meta = f.metadata()
            saved = asdict(TrainConfig(**json.loads(meta["train_config"])))  # fields added since take their defaults
            if saved != asdict(cfg):
                changed = sorted(k for k in saved if saved[k] != asdict(cfg).get(k))
                raise TrainConfigError(f"--resume with a different training config (changed: {', '.join(changed)}); "
                                       "accepted: the settings the run was started with")
            tensors = load_file(state_path)
            model.load_state_dict(_with_prefix(tensors, "model."))
            ema.load_state_dict(_with_prefix(tensors, "ema."))
            _load_optimizer(optimizer, _with_prefix(tensors, "optim."), meta["param_groups"])
            start = int(meta["step"])
            log = []
            if (out / "loss.csv").exists():
                with open(out / "loss.csv", newline="") as f:
                    log = list(csv.DictReader(f))
            elapsed = float(log[-1]["seconds"]) if log else 0.0
        (out / "train.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        with open(out / "machines.txt", "a") as f:  # one line per sitting
            f.write(f"step {start}: {machine_description()}\n")

        data = VideoBenchmark("train", frames=cfg.frames, size=model.config.frame_size, scene=cfg.scene)
        log_file = open(out / "loss.csv", "a", newline="")
        writer = csv.writer(log_file)
        if start == 0:
            log_file.truncate(0)
            writer.writerow(["step", "loss", "lr", "grad_norm", "seconds"])
        generator = torch.Generator()
        model.train()
        end = cfg.steps if until is None else min(until, cfg.steps)
        bar = progress_bar(range(start, end), initial=start, total=cfg.steps, disable=not progress, desc="train")
        t0, loss = time.perf_counter() - elapsed, float("nan")
        for step in bar:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            clips = data.batch(range(step * cfg.batch_size, (step + 1) * cfg.batch_size))
            generator.manual_seed(cfg.seed * 1_000_003 + step)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # what the model draws itself (SCD's encoder noise)
            loss = flow_matching_loss(model, clips, cfg, generator, bidirectional=step < cfg.bidirectional_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss = loss.detach()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update_parameters(model)
            writer.writerow([step + 1, f"{loss.item():.5f}", f"{lr:.3g}", f"{grad_norm.item():.4f}",
                             f"{time.perf_counter() - t0:.1f}"])
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2g}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
                log_file.flush()
                save_train_state(state_path, step + 1, model, ema, optimizer, cfg)
                save_model(ema.module, out / "model.safetensors")
            if cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0:  # raw: a short run's EMA lags its weights
                save_model(model, out / "snapshots" / f"step-{step + 1:06d}.safetensors")
        log_file.close()
        if start >= end:
            save_model(ema.module, out / "model.safetensors")
        if out != final:
            replace(out, final)
    finally:
        torch.set_num_threads(callers_threads)  # the run's threads are the run's, not the caller's from now on
        if out != final:  # failed or interrupted: nothing of this sitting stays
            discard(out)
    return {"steps": max(start, end), "resumed_from": start, "final_loss": float(loss), "seconds": time.perf_counter() - t0,
            "machine": machine_description()}


def trained_steps(run: str | Path) -> int:
    """The step a training directory's last checkpoint holds (0 where there is none); a TrainConfigError (one line)
    where the checkpoint cannot be read or does not say its step."""
    from safetensors import SafetensorError, safe_open

    state = Path(run) / "train_state.safetensors"
    if not state.is_file():
        return 0
    try:
        with safe_open(state, "pt") as f:
            step = (f.metadata() or {}).get("step")
    except (SafetensorError, OSError):
        step = None
    if not isinstance(step, str) or not step.isdigit():
        raise TrainConfigError(f"{state} is not a readable training checkpoint with its step (damaged or truncated); "
                               "accepted: a checkpoint written by probe train, or remove the run to start it again")
    return int(step)


def load_trained(run: str | Path, weights: str = "ema") -> nn.Module:
    """A training run's EMA weights (`model.safetensors`) or its raw optimised weights (from `train_state`)."""
    from scd.zoo import load_model

    if weights not in WEIGHTS:
        raise TrainConfigError(f"unknown weights {weights!r}; accepted: {', '.join(WEIGHTS)}")
    model = load_model(run)
    if weights == "raw":
        model.load_state_dict(_with_prefix(load_file(Path(run) / "train_state.safetensors"), "model."))
    return model.eval()


@torch.no_grad()
def dev_loss(model: nn.Module, run: str | Path, clips: int = 64) -> float:
    """Flow-matching loss (float32, fixed noise) on train-split clips the run never saw: a dev set
    disjoint from both the training clips and the val split, for choosing weights without touching val."""
    cfg = TrainConfig(**json.loads((Path(run) / "train.json").read_text()))
    first = cfg.steps * cfg.batch_size
    data = VideoBenchmark("train", frames=cfg.frames, size=model.config.frame_size, scene=cfg.scene)
    generator = torch.Generator().manual_seed(12345)
    eval_cfg = TrainConfig(**{**asdict(cfg), "bf16": False})
    losses = [flow_matching_loss(model, data.batch(range(first + i, first + min(clips, i + 16))), eval_cfg, generator)
              for i in range(0, clips, 16)]
    return float(torch.stack(losses).mean())
