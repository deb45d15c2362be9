"""Named models and checkpoints: `load_model("baseline" | path)`, `save_model`.

A checkpoint is a `.safetensors` file of weights and a JSON config beside it (`{stem}.json`, or
`config.json` next to `model.safetensors` in a directory). The config records the model family,
its size and the sha256 of the weights, so a truncated, corrupt or mismatched file is refused with
a one-line `CheckpointError` instead of a traceback or a silent partial load. Never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scd.checkpoint_files import CHECKPOINT_DIR, config_path_for, read_config, resolve, shipped_models  # noqa: F401
from scd.devices import Placement, placed
from scd.errors import CheckpointError
from scd.files import atomic_file, sha256
from scd.models.baseline import BASELINE_SIZES, BaselineConfig, CausalVideoDiffuser
from scd.models.scd_model import SCD_SIZES, SCDConfig, SeparableCausalDiffuser

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "baseline": (BaselineConfig, CausalVideoDiffuser),
    "scd": (SCDConfig, SeparableCausalDiffuser),
}
SIZES: dict[str, dict] = {"baseline": BASELINE_SIZES, "scd": SCD_SIZES}  # named sizes of each family


RANDOM_POOL = 2**20 + 7  # seeded draws that `random_model` tiles into its matrices


# Accepted values of each model config field: (type, low, high); sizes are also checked against each other below.
FIELD_LIMITS: dict[str, tuple[type, float, float]] = {
    "frame_size": (int, 1, 1024), "patch_size": (int, 1, 1024), "channels": (int, 1, 64), "width": (int, 2, 16384),
    "depth": (int, 1, 512), "encoder_depth": (int, 1, 512), "decoder_depth": (int, 1, 512), "heads": (int, 1, 256),
    "mlp_ratio": (float, 0.01, 64.0), "rope_theta": (float, 1.0, 1e12), "encoder_noise": (float, 0.0, 10.0),
    "frame_local_blocks": (int, 0, 512), "frame_width": (int, 0, 1024),
}


def validate_config(family: str, config: dict, memory: bool = True) -> None:
    """Refuse, field by field, a model config that cannot build a model: types, ranges, divisibility, and (with
    `memory`) whether its float32 weights fit this machine."""
    import math

    from scd.memory import NotEnoughMemory, check_fits

    config_cls = FAMILIES[family][0]
    for f in fields(config_cls):
        if f.name not in config:
            continue
        value, (kind, low, high) = config[f.name], FIELD_LIMITS[f.name]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
        if not ok or not math.isfinite(value) or not low <= value <= high:
            what = "an integer" if kind is int else "a finite number"
            raise CheckpointError(f"{family} config: {f.name} = {value!r}; accepted: {what} in {low:g}..{high:g}")
    cfg = config_cls(**config)
    _, height, width = cfg.frame_shape  # scd.models.baseline.frame_shape: the one place frame geometry is read
    if height % cfg.patch_size or width % cfg.patch_size:
        raise CheckpointError(f"{family} config: patch_size {cfg.patch_size} does not divide frame_size {height} "
                              f"and frame_width {width}; accepted: a divisor of both")
    if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
        raise CheckpointError(f"{family} config: width {cfg.width} / heads {cfg.heads} must be an even whole head "
                              "dimension (RoPE rotates pairs); accepted: heads dividing width into even parts")
    depth = cfg.depth  # SCDConfig: encoder and decoder blocks together
    if isinstance(cfg, BaselineConfig) and cfg.frame_local_blocks > depth:
        raise CheckpointError(f"{family} config: frame_local_blocks {cfg.frame_local_blocks} exceeds depth {depth}; "
                              f"accepted: 0..{depth}")
    if not memory:
        return
    parameters = depth * (4 + 2 * cfg.mlp_ratio + 6) * cfg.width ** 2  # attention, MLP and adaLN of every block
    try:
        check_fits(int(parameters * 4), f"a {family} model of width {cfg.width} and {depth} blocks")
    except NotEnoughMemory as e:
        raise CheckpointError(str(e)) from None


def build_model(config: dict, device: str | torch.device | None = None) -> nn.Module:
    """A freshly initialised model from a config dict (`family` plus the family's config fields), validated
    first (`validate_config`); `device="meta"` builds it without allocating its weights."""
    if not isinstance(config, dict):
        raise CheckpointError(f"a model config must be a dict, got {type(config).__name__}")
    config = dict(config)
    family = config.pop("family", None)
    if not isinstance(family, str) or family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; accepted: {', '.join(FAMILIES)}")
    config_cls, model_cls = FAMILIES[family]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"unknown {family} config fields {unknown}; accepted: {sorted(known)}")
    validate_config(family, config, memory=str(device) != "meta")  # a meta model holds no weights
    if device is None:
        return model_cls(config_cls(**config))
    with torch.device(device):
        return model_cls(config_cls(**config))


def load_model(name_or_path: str | Path, device: str | torch.device | Placement = "cpu",
               dtype: torch.dtype | None = None, **diffusers_options) -> nn.Module:
    """Load a model (a `scd.contract.VideoDiffuser`) in eval mode: a shipped name ("baseline"), a checkpoint
    directory, a .safetensors file, or "diffusers:DIR", a local diffusers Wan / SkyReels-V2 transformer or pipeline
    directory (`scd.wan.pipeline.load_causal_wan`; `diffusers_options`: latent_size, text_embeddings,
    frames_per_block, fps, scheduler). The device and dtype (None: float32) are checked first, or given as one checked
    `scd.devices.Placement` (`device`) and trusted: a DeviceError (a ValueError) names the accepted ones."""
    where = placed(device, dtype)
    device, dtype = where.device, where.dtype
    if isinstance(name_or_path, str) and name_or_path.startswith("diffusers:"):
        from scd.wan.pipeline import load_causal_wan

        return load_causal_wan(name_or_path.removeprefix("diffusers:"), device=where, **diffusers_options)
    if diffusers_options:
        raise CheckpointError(f"options {sorted(diffusers_options)} are for diffusers:DIR models; a built-in "
                              "checkpoint takes device and dtype only")
    if not isinstance(name_or_path, str | Path):
        raise CheckpointError(f"model must be a name or a path, got {type(name_or_path).__name__}; accepted: "
                              f"{', '.join(shipped_models())}, a checkpoint directory or a .safetensors file")
    weights, config_path = resolve(name_or_path)
    config = read_config(config_path)
    expected_sha = config.pop("sha256", None)
    config.pop("dtype", None)
    digest = sha256(weights)
    if expected_sha is not None and digest != expected_sha:
        raise CheckpointError(f"checkpoint {weights} does not match the sha256 in {config_path.name} (truncated or replaced?); "
                              "accepted: the weights the config was written with (save or export them again)")
    try:
        model = build_model(config)
    except CheckpointError as e:
        raise CheckpointError(f"config {config_path}: {e}") from None
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {weights} is corrupt or truncated: {str(e).splitlines()[0]}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {weights} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"checkpoint {weights}: {key} has shape {tuple(value.shape)}, "
                                  f"the config needs {tuple(expected[key].shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"checkpoint {weights}: {key} is {str(value.dtype).removeprefix('torch.')}; "
                                  "accepted: float32, float16 or bfloat16 weights")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {weights}: {key} holds NaN or infinite values; accepted: finite weights")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    # Where the weights came from, for the manifests of runs made with this model.
    model.checkpoint = {"name": str(name_or_path), "path": str(weights), "sha256": digest}
    return model.to(device=device, dtype=dtype).eval()


def random_model(family: str, size: str, device: str | torch.device | Placement = "cpu",
                 dtype: torch.dtype | None = None, seed: int = 0, **overrides) -> nn.Module:
    """A model of a named size (`SIZES`) with seeded random weights, allocated once on `device` in `dtype` (no float32
    copy first): for speed and memory at sizes no checkpoint ships, e.g. "wan1.3b". Nothing is downloaded. Matrices are
    tiled from one seeded pool of N(0, 0.02^2) draws, each from its own offset (the adaLN gates too, so no block is the
    identity); norms' scales are 1, biases 0. Tiling, because drawing 1.5 B values one by one takes half a minute on a
    CPU, and no timing depends on the values. `overrides` change config fields, e.g. frame_size and frame_width."""
    if family not in SIZES:
        raise CheckpointError(f"unknown model family {family!r}; accepted: {', '.join(SIZES)}")
    if size not in SIZES[family]:
        raise CheckpointError(f"unknown {family} size {size!r}; accepted: {', '.join(SIZES[family])}")
    where = placed(device, dtype)  # a checked Placement is trusted
    device, dtype = where.device, where.dtype
    model = build_model({"family": family, **asdict(SIZES[family][size]), **overrides}, device="meta")
    if device.type == "cpu":
        from scd.memory import NotEnoughMemory, check_fits

        try:
            check_fits(sum(p.numel() for p in model.parameters()) * dtype.itemsize, f"a {family} {size} model")
        except NotEnoughMemory as e:
            raise CheckpointError(str(e)) from None
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(RANDOM_POOL, generator=generator) * 0.02).to(device, dtype)
    with torch.no_grad():
        for i, (name, parameter) in enumerate(model.named_parameters()):
            if "norm" in name:
                parameter.fill_(1.0)
            elif parameter.dim() > 1:
                flat, offset = parameter.view(-1), (i * 7919) % RANDOM_POOL  # a prime stride: matrices differ
                for start in range(0, flat.numel(), RANDOM_POOL - offset):
                    part = flat[start:start + RANDOM_POOL - offset]
                    part.copy_(pool[offset:offset + part.numel()])
            else:
                parameter.zero_()
    if any(True for _ in model.buffers()):  # none today; a buffer would be left uninitialised by to_empty
        raise CheckpointError(f"a {family} model has buffers; random_model cannot initialise them")
    model.checkpoint = {"name": f"{family}-{size} (random weights, seed {seed})", "path": None, "sha256": None}
    return model.eval()


def save_model(model: nn.Module, weights_path: str | Path, dtype: torch.dtype = torch.float32,
               config_path: str | Path | None = None) -> Path:
    """Write weights (atomically) and the JSON config with their sha256; returns the weights path."""
    weights_path = Path(weights_path)
    config_path = config_path_for(weights_path) if config_path is None else Path(config_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_file(weights_path) as tmp:  # a full disk leaves the old weights, never half of new ones
        save_file(state, tmp)
    config = {**model.get_config(), "dtype": str(dtype).removeprefix("torch."), "sha256": sha256(weights_path)}
    with atomic_file(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return weights_path


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the block it reads has run."""


def block_update_ratios(model: nn.Module, video: torch.Tensor, timesteps: torch.Tensor,
                        upto: int | None = None) -> list[float]:
    """Per block, how far it moves the residual stream on one batch: ||resid_post - resid_pre|| / ||resid_pre|| (over
    every token of the batch), read with plain forward hooks on the blocks (a built-in model's `blocks`); with `upto`,
    blocks 0..upto only (the forward pass stops there)."""
    ratios: list[float] = []

    def hear(_module, args, output) -> None:
        before, after = args[0], output[0]
        ratios.append(float((after - before).norm() / before.norm().clamp_min(1e-30)))
        if upto is not None and len(ratios) > upto:
            raise _Stop

    handles = [block.register_forward_hook(hear) for block in model.blocks]
    try:
        with torch.no_grad():
            model(video, timesteps)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return ratios


def rescale_updates(control: nn.Module, target: list[float], video: torch.Tensor, timesteps: torch.Tensor,
                    tolerance: float = 1e-5, rounds: int = 30) -> list[float]:
    """Make a random-weight control compute as much as the trained model does, in place: block by block (each after
    the ones before it are rescaled, so it sees the input it will see), its residual update is scaled so that its
    update ratio (`block_update_ratios`) on the batch matches `target`, the trained model's on the same batch, to
    `tolerance` (relative). The scale
    goes on the adaLN gates of the attention and MLP updates (rows 2W..3W and 5W..6W of the block's modulation);
    the MLP reads the stream after the attention update, so the ratio is not linear in the scale and the factor is
    refined until it matches. Returns each block's factor. A permuted control alone barely departs from its input
    (its layer 15 by 6.8% on the shipped baseline, the trained one by 179%), so it fails the claims for one trivial
    reason; rescaled, it transforms its input as much as the trained model and fails them, if it does, for want of
    learned structure."""
    width = control.blocks[0].modulation.out_features // 6
    factors = []
    for i, block in enumerate(control.blocks):
        total = 1.0
        for _ in range(rounds):
            have = block_update_ratios(control, video, timesteps, upto=i)[i]
            if have <= 0 or abs(have / target[i] - 1) <= tolerance:
                break
            factor = target[i] / have
            with torch.no_grad():
                for first in (2 * width, 5 * width):  # gate1 and gate2 of the block's adaLN modulation
                    block.modulation.weight[first:first + width] *= factor
                    block.modulation.bias[first:first + width] *= factor
            total *= factor
        factors.append(total)
    return factors


def rescaled_control(model: nn.Module, seed: int = 0, clips: int = 4) -> dict:
    """The permuted-weights control (`permute_weights`) with each block's update rescaled to the trained model's
    (`rescale_updates`), in place, calibrated on val clips 10000.. of the benchmark (none of the clips a run probes by
    default) at 4 context frames noised to timesteps 1000, 750, 500, 250. Returns the control's record."""
    from scd.data import VideoBenchmark

    if not model.takes_surgeries:  # the contract's word for "its `blocks` are built-in adaLN blocks"
        raise CheckpointError(f"a {type(model).__name__} has no built-in blocks to rescale; accepted: the built-in "
                              "baseline (--control permuted for the other families)")
    first = next(model.parameters())
    benchmark = VideoBenchmark("val", frames=4, size=model.frame_shape[1])
    video = torch.stack([benchmark.clip(10_000 + c) for c in range(clips)]).to(first.device, first.dtype)
    timesteps = torch.tensor([[1000.0, 750.0, 500.0, 250.0]] * clips, device=first.device, dtype=first.dtype)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(video.shape, generator=generator).to(first.device, first.dtype)
    sigma = (timesteps / 1000)[..., None, None, None]
    noisy = (1 - sigma) * video + sigma * noise  # the flow-matching interpolation the models are trained on
    target = block_update_ratios(model.eval(), noisy, timesteps)  # the trained model's, before its weights go
    record = permute_weights(model, seed)
    factors = rescale_updates(model, target, noisy, timesteps)
    model.checkpoint = {**model.checkpoint, "name": model.checkpoint["name"].replace("(permuted weights",
                                                                                    "(permuted and rescaled weights")}
    return {**record, "kind": "rescaled", "factors": factors, "calibration": {"clips": [10_000, 10_000 + clips - 1],
            "timesteps": [1000, 750, 500, 250]},
            "what": "every parameter tensor's entries permuted (scd.zoo.permute_weights), then each block's update "
                    "rescaled to the trained model's update ratio ||out - in|| / ||in|| on the calibration batch "
                    "(scd.zoo.rescale_updates)"}


def permute_weights(model: nn.Module, seed: int = 0) -> dict:
    """Make `model` a random-weight control of its own architecture, in place: the entries of every parameter tensor
    are permuted (one seeded generator over the tensors in `named_parameters` order). Each tensor keeps its values,
    hence its scale and distribution, while every structure learned across its entries is destroyed; norms' scales
    are permuted too (all ones stay all ones). Returns the control's record for the manifest; the model's checkpoint
    name says it."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise CheckpointError(f"permutation seed {seed!r}; accepted: an integer in 0..2^63-1")
    generator = torch.Generator().manual_seed(seed)
    tensors = 0
    with torch.no_grad():
        for _, parameter in model.named_parameters():
            order = torch.randperm(parameter.numel(), generator=generator).to(parameter.device)
            flat = parameter.detach().reshape(-1)
            parameter.copy_(flat[order].view_as(parameter))
            tensors += 1
    checkpoint = dict(model.checkpoint or {"name": type(model).__name__})
    checkpoint["name"] = f"{checkpoint.get('name')} (permuted weights, seed {seed})"
    model.checkpoint = checkpoint
    return {"kind": "permuted", "seed": seed, "tensors": tensors,
            "what": "every parameter tensor's entries permuted with torch.randperm (scd.zoo.permute_weights)"}
