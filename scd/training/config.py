"""The training configuration and its accepted ranges, importable without torch (the command builds its flags from it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

SCENES = ("sprites", "textured")  # the benchmark's scenes (scd.data.VideoBenchmark), named here to stay torch-free
SEED_MAX = 2**32 - 1  # step s draws with seed * 1_000_003 + s: it must stay inside torch's 64-bit seed


class TrainConfigError(ValueError):
    """A training configuration outside its accepted ranges; the message names the field and the range."""


@dataclass
class TrainConfig:
    family: str = "baseline"         # model family (see scd.zoo.FAMILIES)
    size: str = "baseline"           # named size of that family
    steps: int = 4500                # optimisation steps in total
    batch_size: int = 8              # clips per step
    frames: int = 8                  # frames per training clip
    lr: float = 1e-3                 # peak AdamW learning rate
    warmup: int = 200                # linear warm-up steps, then cosine decay
    min_lr_ratio: float = 0.1        # final lr = lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0           # max global gradient norm
    ema_decay: float = 0.999         # EMA of the weights (`probe export` ships EMA or raw, whichever is better)
    clean_context_ratio: float = 0.5  # share of frames kept clean (sigma = 0), excluded from the loss
    decoder_lr_scale: float = 1.0    # SCD: the decoder's lr / lr (the paper: 2)
    logit_normal_std: float = 1.0    # sigma = sigmoid(N(0, std))
    bf16: bool = True                # bfloat16 autocast (faster on this CPU; weights stay float32)
    checkpoint_every: int = 250      # steps between resumable checkpoints
    seed: int = 0                    # noise seed; batch b of step s uses train clips s*B .. s*B+B-1
    threads: int = 0                 # torch threads (0: torch's default)
    init: str = ""                   # start from these weights (a shipped name or a checkpoint); "": a fresh init
    frame_local_blocks: int = 0      # baseline: the last n blocks attend only within the frame (the paper's surgery)
    bidirectional_steps: int = 0     # baseline: the first n steps attend across the clip (as Wan was pretrained), then causal
    restart_schedule: bool = False   # with bidirectional_steps: the causal fine-tune restarts warm-up and cosine decay, so
                                     # it is scheduled exactly as a run of steps - n causal steps from scratch
    snapshot_every: int = 0          # keep the raw weights every n steps in snapshots/ (emergence over training); 0: none
    scene: str = "sprites"           # the benchmark scene trained on (scd.data.VideoBenchmark): sprites or textured

    def __post_init__(self) -> None:
        for f in fields(self):
            value, (low, high, closed) = getattr(self, f.name), LIMITS.get(f.name, (None, None, True))
            kind = {"int": int, "float": float, "bool": bool, "str": str}[f.type]
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
                if kind in (int, float) else isinstance(value, str))
            if ok and f.name == "scene":
                ok = value in SCENES
            if ok and kind in (int, float):
                ok = math.isfinite(value) and low <= value <= high and (closed or value < high)
            if not ok:
                raise TrainConfigError(f"{f.name} = {value!r} is not accepted; accepted: {describe(f.name)}")


# Accepted range of each number: (low, high, whether high itself is accepted).
LIMITS: dict[str, tuple[float, float, bool]] = {
    "steps": (1, 10**8, True), "batch_size": (1, 4096, True), "frames": (1, 1024, True), "lr": (1e-12, 10.0, True),
    "warmup": (0, 10**8, True), "min_lr_ratio": (0.0, 1.0, True), "weight_decay": (0.0, 10.0, True),
    "grad_clip": (1e-12, 1e12, True), "ema_decay": (0.0, 1.0, False), "clean_context_ratio": (0.0, 1.0, False),
    "decoder_lr_scale": (1e-6, 1e6, True), "logit_normal_std": (1e-6, 100.0, True),
    "checkpoint_every": (1, 10**8, True), "seed": (0, SEED_MAX, True), "threads": (0, 1024, True),
    "frame_local_blocks": (0, 512, True), "bidirectional_steps": (0, 10**8, True), "snapshot_every": (0, 10**8, True),
}


def describe(name: str) -> str:
    """The accepted values of a field, in words."""
    if name not in LIMITS:
        return {"bf16": "true or false", "restart_schedule": "true or false", "init": "a shipped model name or a checkpoint path",
                "scene": " or ".join(SCENES)}.get(name, "a name")
    low, high, closed = LIMITS[name]
    kind = next(f.type for f in fields(TrainConfig) if f.name == name)
    if kind == "int":
        return f"an integer in {low}..{high}" + (" (0: torch's default)" if name == "threads" else "")
    return f"a finite number in [{low:g}, {high:g}{']' if closed else ')'}"


# What `probe train FAMILY` uses unless told otherwise. SCD: the paper's decoder lr x2, no clean share
# (see scd/training/train.py), and the steps that give it the shipped baseline's training FLOPs
# (4500 steps x 199 GFLOP = 3500 steps x 254 GFLOP, `scd.flops.training_flops`).
FAMILY_DEFAULTS: dict[str, dict] = {
    "baseline": {"size": "baseline", "steps": 4500},
    "scd": {"size": "scd", "steps": 3500, "clean_context_ratio": 0.0, "decoder_lr_scale": 2.0},
}


def default_config(family: str, **overrides) -> TrainConfig:
    """The training config of a family (`FAMILY_DEFAULTS`), with `overrides` (None values ignored); a
    TrainConfigError for an unknown family or a value out of its range."""
    if family not in FAMILY_DEFAULTS:
        raise TrainConfigError(f"unknown model family {family!r}; accepted: {', '.join(FAMILY_DEFAULTS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainConfigError(f"unknown training settings {unknown}; accepted: {sorted(known)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(**{**asdict(TrainConfig()), "family": family, **FAMILY_DEFAULTS[family], **given})
