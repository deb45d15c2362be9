"""Original-layout Wan / CausVid / Self-Forcing / SkyReels-V2 checkpoints -> a diffusers transformer directory.

    probe convert self_forcing_dmd.pt runs/self-forcing --frames-per-block 3

The original layout (`blocks.N.self_attn.q.weight`, `head.head.weight`, ...) is renamed to diffusers'
`WanTransformer3DModel` (or `SkyReelsV2Transformer3DModel` where the checkpoint has SkyReels-V2's fps
embedding) as diffusers' own conversion script renames it; the configuration is read off the weights'
shapes (heads: width / 128, Wan's head size, unless given). Training checkpoints that wrap the
weights (`generator_ema`, `generator`, `state_dict`, `model`) or prefix them (`model.`, `module.`,
`_fsdp_wrapped_module.`) are unwrapped. `.safetensors` are read as they are; `.pt` / `.pth` only with
`torch.load(weights_only=True)`, which loads tensors and plain containers and never runs pickled code.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from scd.zoo import CheckpointError

# Renames applied in order to every key, as diffusers' scripts/convert_wan_to_diffusers.py does. The original
# block calls its norms norm1, norm3 (cross-attention, affine), norm2 (FFN, no weights); diffusers: norm1, norm2, norm3.
RENAMES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("fps_projection.0", "fps_projection.net.0.proj"),
    ("fps_projection.2", "fps_projection.net.2"),
    ("norm3", "norm2"),
    ("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k"),
)
WRAPPERS = ("generator_ema", "generator", "state_dict", "model")
PREFIXES = ("_fsdp_wrapped_module.", "module.", "model.")
SUFFIXES = (".safetensors", ".pt", ".pth")


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted; the message names each offending key on a line of its own."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, or of a `.pt` / `.pth` file through `torch.load(weights_only=True)`
    (with a warning saying so), unwrapped and unprefixed as training checkpoints store them."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConversionError(f"{path} is not a checkpoint file; accepted: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; accepted: a {', '.join(SUFFIXES)} file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ConversionError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    else:
        warnings.warn(f"{path.name}: reading a pickle-format checkpoint with torch.load(weights_only=True): tensors and "
                      "plain containers only, no code is run; prefer .safetensors", stacklevel=2)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an UnpicklingError for anything weights_only refuses
            raise ConversionError(f"{path} cannot be read with weights_only=True: {str(e).splitlines()[0]}") from None
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ConversionError(f"{path} holds no tensors at its top level nor under {', '.join(WRAPPERS)}")
        state = inner
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}; accepted: a state dict of tensors")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def rename(key: str) -> str:
    """A key of the original layout -> diffusers' (keys already in diffusers' layout come through unchanged)."""
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def infer_config(state: dict[str, torch.Tensor], heads: int | None = None, frames_per_block: int = 1) -> tuple[str, dict]:
    """(family, diffusers config) read off the shapes of a renamed state dict."""
    try:
        patch = state["patch_embedding.weight"]
        width, in_channels, *patch_size = patch.shape
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        ffn_dim = state["blocks.0.ffn.net.0.proj.weight"].shape[0]
        text_dim = state["condition_embedder.text_embedder.linear_1.weight"].shape[1]
        freq_dim = state["condition_embedder.time_embedder.linear_1.weight"].shape[1]
        out_channels = state["proj_out.weight"].shape[0] // (patch_size[0] * patch_size[1] * patch_size[2])
    except (KeyError, ValueError) as e:
        raise ConversionError(f"not a Wan-layout checkpoint: missing {e}; accepted: the original Wan / CausVid / "
                              "Self-Forcing / SkyReels-V2 layout or diffusers'") from None
    heads = heads or max(1, width // 128)
    if width % heads or (width // heads) % 2:
        raise ConversionError(f"width {width} does not split into {heads} heads of an even size; accepted: --heads N")
    config = dict(patch_size=list(patch_size), num_attention_heads=heads, attention_head_dim=width // heads,
                  in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
                  num_layers=blocks, cross_attn_norm="blocks.0.norm2.weight" in state, qk_norm="rms_norm_across_heads",
                  eps=1e-6)
    if "fps_embedding.weight" in state:
        return "SkyReelsV2Transformer3DModel", {**config, "inject_sample_info": True, "num_frame_per_block": frames_per_block}
    return "WanTransformer3DModel", config


def convert(source: str | Path, out: str | Path, *, heads: int | None = None, frames_per_block: int = 1,
            force: bool = False) -> Path:
    """Write a diffusers transformer directory (config.json + safetensors + convert.json) at `out` from `source`."""
    import diffusers

    from scd.outputs import atomic_directory, check_output, signature
    from scd.zoo import sha256

    check_output(out, "converted", force)
    state = {rename(k): v for k, v in read_weights(source).items()}
    family, config = infer_config(state, heads, frames_per_block)
    with torch.device("meta"):
        model = getattr(diffusers, family)(**config)
    expected = set(model.state_dict())
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        lines = [f"unknown key {k} (not in {family})" for k in unknown] + [f"missing key {k}" for k in missing]
        raise ConversionError("\n".join(lines))
    for key, tensor in model.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConversionError(f"key {key} has shape {list(state[key].shape)}; {family} expects {list(tensor.shape)}")
    model.load_state_dict(state, assign=True, strict=True)
    with atomic_directory(out, "converted", force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "convert.json").write_text(json.dumps({**signature("converted"), "source": str(source),
                                                      "source_sha256": sha256(Path(source)),
                                                      "family": family, "config": config}, indent=2))
    return Path(out)
