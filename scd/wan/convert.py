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

from scd.contract import MAX_FRAMES_PER_BLOCK
from scd.errors import CheckpointError

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
PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "module.", "model.")  # _orig_mod.: a torch.compile'd module's
SUFFIXES = (".safetensors", ".pt", ".pth")
ACCEPTED = ("a .safetensors, .pt or .pth file, a sharded checkpoint's .index.json, or a directory of .safetensors "
            "shards")


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted; the message is one line naming the offending keys in the file's names."""


def _shards(path: Path) -> list[Path]:
    """The files of a checkpoint: the file itself, the shards an `.index.json` names, or a directory's shards."""
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise ConversionError(f"{path} holds no .safetensors shards; accepted: {ACCEPTED}")
        return shards
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = sorted({path.parent / name for name in weight_map.values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ConversionError(f"{path} is not a sharded checkpoint's index (a JSON weight_map); accepted: "
                                  f"{ACCEPTED}") from None
        missing = [s.name for s in shards if not s.is_file() or s.parent != path.parent]
        if missing:
            raise ConversionError(f"{path} names shard {missing[0]}, which is not beside it; accepted: an index with "
                                  "its shards in one directory")
        return shards
    if path.suffix not in SUFFIXES:
        raise ConversionError(f"{path} is not a checkpoint file; accepted: {ACCEPTED}")
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; accepted: {ACCEPTED}")
    return [path]


def _safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A `.safetensors` file's tensors and its header's metadata, refused in one line if it cannot be read."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        return load_file(path), metadata
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise ConversionError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None


def _unpickled(path: Path) -> object:
    """A `.pt` / `.pth` file through `torch.load(weights_only=True)`: tensors and plain containers, never code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an UnpicklingError for anything weights_only refuses
        raise ConversionError(f"{path} cannot be read with weights_only=True: {str(e).splitlines()[0]}") from None


def read_weights(path: str | Path, ema: bool | None = None, notes: list[str] | None = None,
                 file_names: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (`.safetensors`, sharded safetensors, or `.pt` / `.pth` through
    `torch.load(weights_only=True)`), unwrapped and unprefixed as training checkpoints store them, by the names of
    the file. A checkpoint holding both `generator_ema` and `generator` needs `ema` (True: the EMA weights). What
    was read and chosen is appended to `notes` (said after the work, never in a refusal); `file_names` gets each
    returned key's name in the file (prefixes included), for messages in the file's own names."""
    from scd.files import input_path

    path = input_path(path, "source", ACCEPTED, ConversionError)
    if ema is not None and not isinstance(ema, bool):
        raise ConversionError(f"ema = {ema!r}; accepted: True, False or None")
    notes = [] if notes is None else notes
    path = Path(path)
    state: object = {}
    shards = _shards(path)
    for shard in shards:
        if shard.suffix == ".safetensors":
            part, _ = _safetensors(shard)
        else:
            notes.append(f"{shard.name}: read a pickle-format checkpoint with torch.load(weights_only=True) (tensors and "
                         "plain containers only, no code is run); prefer .safetensors")
            part = _unpickled(shard)
        if len(shards) == 1:
            state = part
        else:
            clash = sorted(set(state) & set(part)) if isinstance(state, dict) else []
            if clash:
                raise ConversionError(f"{shard}: key {clash[0]} is also in another shard; accepted: each key in one shard")
            state = {**state, **part}
    if isinstance(state, dict) and isinstance(state.get("generator_ema"), dict) and isinstance(state.get("generator"), dict):
        if ema is None:
            raise ConversionError(f"{path} holds both generator_ema and generator weights; accepted: --ema (the EMA "
                                  "weights, as Self-Forcing's inference --use_ema) or --no-ema (the raw generator)")
        notes.append(f"converted {'generator_ema (the EMA weights)' if ema else 'generator (the raw weights, not the EMA)'}")
        state = state["generator_ema" if ema else "generator"]
    elif ema is not None:
        raise ConversionError(f"--{'ema' if ema else 'no-ema'} chooses between generator_ema and generator; {path} does "
                              "not hold both; accepted: no --ema / --no-ema")
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        wrapper = next((k for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            raise ConversionError(f"{path} holds no tensors at its top level nor under {', '.join(WRAPPERS)}")
        notes.append(f"read the weights under {wrapper!r}")
        state = state[wrapper]
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}; accepted: a state dict of tensors")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key
        while name.startswith(PREFIXES):
            name = next(name.removeprefix(p) for p in PREFIXES if name.startswith(p))
        if name in out:
            raise ConversionError(f"{path}: keys {key} and another both become {name} once unprefixed; accepted: one "
                                  "copy of each weight")
        if not value.is_floating_point():
            raise ConversionError(f"{path}: {key} is {str(value.dtype).removeprefix('torch.')}; accepted: float32, "
                                  "float16 or bfloat16 weights")
        if not bool(torch.isfinite(value).all()):
            raise ConversionError(f"{path}: {key} holds NaN or infinite values; accepted: finite weights")
        out[name] = value
        if file_names is not None:
            file_names[name] = key
    return out


LORA_WRAPPERS = ("generator_lora", "lora", "state_dict")  # LongLive saves its adapter under generator_lora
LORA_PREFIXES = ("base_model.model.", *PREFIXES)          # PEFT's wrapper of the adapted model
LORA_KEY = re.compile(r"(.+)\.lora_(A|B)(?:\.[A-Za-z0-9_]+)?\.weight")  # PEFT: <module>.lora_A[.<adapter>].weight


def read_lora(path: str | Path, alpha: float | None, notes: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A LoRA adapter (PEFT's layout, as LongLive saves it under `generator_lora`): per adapted module (the base's
    name, e.g. `blocks.0.self_attn.q`), (A [r, in], B [out, r], scale). The rank is read from A's shape; the scale is
    alpha / rank (PEFT's), alpha given, or read from the file (a top-level `lora_alpha` / `alpha` number, the
    safetensors metadata's `lora_alpha`) or from a PEFT `adapter_config.json` beside it; alpha / sqrt(rank) where the
    adapter was trained with rank-stabilised LoRA (PEFT's `use_rslora`, read from the same places)."""
    from scd.files import input_path

    path = Path(input_path(path, "lora", "a LoRA adapter file (.safetensors, .pt or .pth)", ConversionError))
    if path.suffix not in SUFFIXES or not path.is_file():
        raise ConversionError(f"--lora {path} is not a file; accepted: a LoRA adapter file (.safetensors, .pt or .pth)")
    found_alpha, rslora = None, None
    if path.suffix == ".safetensors":
        state, metadata = _safetensors(path)
        found_alpha = metadata.get("lora_alpha")
        rslora = {"true": True, "false": False, None: None}.get(str(metadata["use_rslora"]).lower()
                                                                  if "use_rslora" in metadata else None, "?")
    else:
        state = _unpickled(path)
    while isinstance(state, dict) and not any(LORA_KEY.fullmatch(str(k)) for k in state):
        if found_alpha is None:
            found_alpha = next((state[k] for k in ("lora_alpha", "alpha") if isinstance(state.get(k), int | float)), None)
        if rslora is None and "use_rslora" in state:
            rslora = state["use_rslora"] if isinstance(state["use_rslora"], bool) else "?"
        wrapper = next((k for k in LORA_WRAPPERS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            raise ConversionError(f"{path} holds no LoRA weights (<module>.lora_A.weight / lora_B.weight) at its top "
                                  f"level nor under {', '.join(LORA_WRAPPERS)}")
        state = state[wrapper]
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}; accepted: a LoRA state dict")
    config = path.parent / "adapter_config.json"
    if config.is_file():
        try:
            peft = json.loads(config.read_text())
            found_alpha = peft.get("lora_alpha") if found_alpha is None else found_alpha
            rslora = peft.get("use_rslora", False) if rslora is None else rslora
            patterns = [name for name in ("rank_pattern", "alpha_pattern") if peft.get(name)]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise ConversionError(f"{config} is not a PEFT adapter config (JSON with lora_alpha)") from None
        if patterns:
            raise ConversionError(f"{config} sets {' and '.join(patterns)} (a rank or alpha per module), which this "
                                  "merge does not apply; accepted: one rank and one alpha for every module")
    if rslora not in (None, True, False):
        raise ConversionError(f"{path}: use_rslora is not true or false; accepted: a boolean (PEFT's LoraConfig)")
    if alpha is None and found_alpha is None:
        raise ConversionError(f"{path} does not say its LoRA alpha (the scale is alpha / rank); accepted: --lora-alpha A "
                              "(LongLive's config: adapter.alpha)")
    try:
        alpha = float(alpha if alpha is not None else found_alpha)
    except (TypeError, ValueError):
        raise ConversionError(f"{path}: lora_alpha {found_alpha!r} is not a number; accepted: --lora-alpha A") from None
    if not 0 < alpha <= 1e6:  # NaN and inf fail this too
        raise ConversionError(f"{path}: lora_alpha {alpha!r}; accepted: a finite number in (0, 1e6] (--lora-alpha A)")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = LORA_KEY.fullmatch(str(key))
        if match is None or not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: {key} is not a LoRA weight; accepted: <module>.lora_A.weight and "
                                  "<module>.lora_B.weight pairs")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()) or value.dim() != 2:
            raise ConversionError(f"{path}: {key} is not a finite float matrix; accepted: LoRA factors [r, in], [out, r]")
        module = match.group(1)
        while module.startswith(LORA_PREFIXES):
            module = next(module.removeprefix(p) for p in LORA_PREFIXES if module.startswith(p))
        halves.setdefault(module, {})[match.group(2)] = value
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"} or half["A"].shape[0] != half["B"].shape[1] or half["A"].shape[0] == 0:
            raise ConversionError(f"{path}: {module} has no matching LoRA factors; accepted: lora_A [r, in] and "
                                  "lora_B [out, r] with r >= 1")
        rank = half["A"].shape[0]
        pairs[module] = (half["A"], half["B"], alpha / (rank ** 0.5 if rslora else rank))
    ranks = sorted({a.shape[0] for a, _, _ in pairs.values()})
    rule = "alpha / sqrt(rank): rank-stabilised, use_rslora" if rslora else "alpha / rank"
    notes.append(f"merged the LoRA {path.name}: {len(pairs)} modules, rank {', '.join(map(str, ranks))}, alpha {alpha:g} "
                 f"(scale {rule})")
    return pairs


def merge_lora(state: dict[str, torch.Tensor], pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
               source: str | Path) -> dict[str, torch.Tensor]:
    """The base weights with each adapted module's weight W replaced by W + scale B A (PEFT's merge), in float32
    and cast back to W's dtype."""
    out = dict(state)
    for module, (a, b, scale) in pairs.items():
        key = f"{module}.weight"
        if key not in state:
            raise ConversionError(f"the LoRA adapts {module}, which {Path(source).name} does not have; accepted: an "
                                  "adapter of this base checkpoint")
        weight = state[key]
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise ConversionError(f"the LoRA's {module} is [{b.shape[0]}, {a.shape[1]}]; the base weight is "
                                  f"{list(weight.shape)}")
        merged = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)
        if not bool(torch.isfinite(merged).all()):  # an overflowing adapter (or scale) must not be written as weights
            raise ConversionError(f"merging the LoRA into {key} gives infinite or NaN weights (in {weight.dtype}); "
                                  "accepted: an adapter and alpha whose merged weights are finite")
        out[key] = merged
    return out


def original_name(key: str) -> str:
    """A diffusers key -> the original layout's name for it (the renames undone, last first)."""
    if key == "scale_shift_table":
        return "head.modulation"  # the head's; the blocks' keep their prefix
    for old, new in reversed(RENAMES):
        key = key.replace(new, old)
    return key


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


def config_heads(source: str | Path) -> int | None:
    """The heads an original Wan directory's `config.json` beside the checkpoint states (`num_heads`), else None."""
    path = Path(source)
    config = (path if path.is_dir() else path.parent) / "config.json"
    try:
        heads = json.loads(config.read_text()).get("num_heads") if config.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def convert(source: str | Path, out: str | Path, *, heads: int | None = None, frames_per_block: int | None = None,
            ema: bool | None = None, force: bool = False, notes: list[str] | None = None,
            lora: str | Path | None = None, lora_alpha: float | None = None) -> Path:
    """Write a diffusers transformer directory (config.json + safetensors + convert.json) at `out` from `source`.
    `frames_per_block` is SkyReels-V2's `num_frame_per_block` (refused for Wan checkpoints, whose chunk is chosen
    at probe time); `ema` chooses between `generator_ema` and `generator` where a checkpoint holds both; `lora`
    (LongLive's adapter) is merged into the base weights at alpha / rank (`lora_alpha`, or read from the file).
    Heads: given, else the `num_heads` of an original `config.json` beside the checkpoint, else width / 128 (the
    head size of every Wan-2.1 size: 1.3B 1536 / 12, 14B 5120 / 40), said in the notes."""
    import diffusers

    from scd.files import OutputError, atomic_directory, check_output, sha256, signature

    if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or not 1 <= heads <= 512):
        raise ConversionError(f"heads = {heads!r}; accepted: an integer in 1..512, or None (width / 128)")
    if frames_per_block is not None and (not isinstance(frames_per_block, int) or isinstance(frames_per_block, bool)
                                         or not 1 <= frames_per_block <= MAX_FRAMES_PER_BLOCK):
        raise ConversionError(f"frames_per_block = {frames_per_block!r}; accepted: an integer in "
                              f"1..{MAX_FRAMES_PER_BLOCK}, or None")
    try:
        check_output(out, "converted", force, flag="out")
    except OutputError as e:
        raise ConversionError(str(e)) from None
    notes = [] if notes is None else notes
    in_file: dict[str, str] = {}
    if lora_alpha is not None and (not isinstance(lora_alpha, int | float) or isinstance(lora_alpha, bool) or
                                   not 0 < lora_alpha <= 1e6):
        raise ConversionError(f"lora_alpha = {lora_alpha!r}; accepted: a number in (0, 1e6]")
    if lora_alpha is not None and lora is None:
        raise ConversionError("lora_alpha scales a LoRA; accepted: with --lora FILE, or neither")
    pairs = read_lora(lora, lora_alpha, notes) if lora is not None else None
    original = read_weights(source, ema, notes, in_file)
    if pairs is not None:
        original = merge_lora(original, pairs, source)
    if heads is None:
        heads = config_heads(source)
        if heads is not None:
            notes.append(f"heads {heads}, from the config.json beside the checkpoint")
    state, names = {}, {}
    for key, value in original.items():
        state[rename(key)], names[rename(key)] = value, in_file[key]
    family, config = infer_config(state, heads, frames_per_block or 1)
    notes.append(f"{family}: {config['num_layers']} blocks, width {config['num_attention_heads'] * config['attention_head_dim']}"
                 f", {config['num_attention_heads']} heads of {config['attention_head_dim']}"
                 + ("" if heads else " (width / 128: Wan's head size; --heads N otherwise)"))
    if frames_per_block is not None and family != "SkyReelsV2Transformer3DModel":
        raise ConversionError(f"--frames-per-block {frames_per_block} is written into SkyReels-V2 configs only; {source} "
                              "is a Wan checkpoint (no fps embedding), whose chunk size is chosen when it is probed: "
                              "accepted: probe run --frames-per-block N, and no --frames-per-block here")
    with torch.device("meta"):
        model = getattr(diffusers, family)(**config)
    expected = set(model.state_dict())
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        named = [f"unknown {names[k]}" for k in unknown] + [f"missing {original_name(k)}" for k in missing]
        shown = ", ".join(named[:6]) + (f" and {len(named) - 6} more" if len(named) > 6 else "")
        raise ConversionError(f"{len(named)} keys of {Path(source).name} do not fit a {family}: {shown} (the file's names); "
                              "nothing was written")
    for key, tensor in model.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConversionError(f"key {names[key]} has shape {list(state[key].shape)}; {family} expects "
                                  f"{list(tensor.shape)}")
    model.load_state_dict(state, assign=True, strict=True)
    source_hash = sha256(Path(source)) if Path(source).is_file() else None
    with atomic_directory(out, "converted", force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "convert.json").write_text(json.dumps({**signature("converted"), "source": str(source),
                                                      "source_sha256": source_hash, "family": family, "config": config,
                                                      "lora": str(lora) if lora is not None else None,
                                                      "notes": notes}, indent=2))
    return Path(out)
