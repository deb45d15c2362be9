"""A local diffusers directory checked as strictly as the toolkit's own checkpoints, before anything is loaded.

diffusers trusts a directory: a config with a string where a number belongs reaches the model's constructor, a
weight the files lack is initialised at random (with a warning that scrolls by), NaN or int8 weights run. Here,
each refusal is one CheckpointError line naming the file, the field and the accepted values:

    config = read_transformer_config(directory)        # types and ranges of every field the toolkit reads
    numel = check_weights(directory, config)           # every weight the model needs, no other, float dtypes
    check_finite(transformer, directory)               # after loading: finite values only
    check_scheduler_config(config, path)               # a scheduler the sampler can run, with sane numbers

and `check_pipeline(root)` refuses what a pipeline directory holds that the toolkit would otherwise ignore:
Wan 2.2's second expert (`transformer_2/`, `boundary_ratio`) and image-to-video transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scd.errors import CheckpointError

# Where each HookPoint of a Wan block sits (causal_wan adds them): the layout's hook paths, known before loading.
HOOK_PATHS = {"hook_resid_pre": "hook_resid_pre", "hook_resid_post": "hook_resid_post",
              "attn.hook_q": "attn1.hook_q", "attn.hook_k": "attn1.hook_k",
              "hook_resid_mid": "hook_resid_mid", "hook_cross_out": "hook_cross_out"}

FAMILIES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")
FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors' names of the float dtypes a transformer may be stored in

# Every config field the toolkit (or the model's constructor) reads: (kind, low, high); None: may be absent / null.
_INT = {"num_attention_heads": (1, 1024), "attention_head_dim": (2, 4096), "in_channels": (1, 4096),
        "out_channels": (1, 4096), "text_dim": (1, 65536), "freq_dim": (2, 65536), "ffn_dim": (1, 1 << 20),
        "num_layers": (1, 1024), "rope_max_seq_len": (1, 1 << 20)}
_OPTIONAL_INT = {"num_frame_per_block": (1, 64), "pos_embed_seq_len": (1, 1 << 24)}
_BOOL = ("cross_attn_norm", "inject_sample_info")
QK_NORMS = (None, "rms_norm_across_heads", "rms_norm", "layer_norm", "layer_norm_across_heads")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a readable JSON {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is a JSON {type(data).__name__}; accepted: a {what} (a JSON object)")
    return data


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_transformer_config(directory: Path) -> dict:
    """The transformer's `config.json`, every field the toolkit reads checked for type and range."""
    path = directory / "config.json"
    config = _read_json(path, "transformer config")
    family = config.get("_class_name")
    if family not in FAMILIES:
        raise CheckpointError(f"{path} describes a {family}; accepted: {', '.join(FAMILIES)}")
    for name, (low, high) in _INT.items():
        value = config.get(name)
        if name not in config:
            continue  # the constructor's default, itself in range
        if not _integer(value) or not low <= value <= high:
            raise CheckpointError(f"{path}: {name} = {value!r}; accepted: an integer in {low}..{high}")
    for name, (low, high) in _OPTIONAL_INT.items():
        value = config.get(name)
        if value is not None and (not _integer(value) or not low <= value <= high):
            raise CheckpointError(f"{path}: {name} = {value!r}; accepted: an integer in {low}..{high}, or null")
    for name in _BOOL:
        if name in config and not isinstance(config[name], bool):
            raise CheckpointError(f"{path}: {name} = {config[name]!r}; accepted: true or false")
    patch = config.get("patch_size", [1, 2, 2])
    if not isinstance(patch, list | tuple) or len(patch) != 3 or not all(_integer(p) and 1 <= p <= 64 for p in patch):
        raise CheckpointError(f"{path}: patch_size = {patch!r}; accepted: three integers in 1..64")
    eps = config.get("eps", 1e-6)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not 0 < eps < 1:
        raise CheckpointError(f"{path}: eps = {eps!r}; accepted: a number in (0, 1)")
    if config.get("qk_norm", "rms_norm_across_heads") not in QK_NORMS:
        raise CheckpointError(f"{path}: qk_norm = {config['qk_norm']!r}; accepted: {', '.join(map(str, QK_NORMS))}")
    head_dim = config.get("attention_head_dim", 128)
    if head_dim % 2:
        raise CheckpointError(f"{path}: attention_head_dim = {head_dim}; accepted: an even number (Wan's 3-axis RoPE)")
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None or \
            config.get("in_channels", 16) != config.get("out_channels", 16):
        raise CheckpointError(f"{path} is an image-to-video transformer (image_dim {config.get('image_dim')}, in_channels "
                              f"{config.get('in_channels')}, out_channels {config.get('out_channels')}); accepted: a "
                              "text-to-video or diffusion-forcing transformer (no image conditioning)")
    return config


def _constructor_kwargs(config: dict) -> dict:
    import inspect

    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in accepted}


HEADER_MAX = 100_000_000  # bytes of a safetensors header (safetensors' own limit)


def safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """The weights a safetensors file holds, key -> (shape, dtype name), read from its header alone: the 8-byte
    length and the JSON that follows (the format's specification), so that a checkpoint larger than the machine's
    memory is described, never mapped. The header's offsets must tile the rest of the file."""
    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"{file} is not a readable safetensors file ({why})")
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= length <= min(HEADER_MAX, size - 8):
                raise damaged(f"a header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    out, spans = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or \
                not isinstance(entry.get("shape"), list) or not all(_integer(n) and n >= 0 for n in entry["shape"]) or \
                not isinstance(entry.get("data_offsets"), list) or len(entry["data_offsets"]) != 2 or \
                not all(_integer(n) for n in entry["data_offsets"]):
            raise damaged(f"its header's entry {key!r} is not a tensor's dtype, shape and offsets")
        out[key] = (tuple(entry["shape"]), entry["dtype"])
        spans.append(tuple(entry["data_offsets"]))
    end = 0
    for start, stop in sorted(spans):  # each tensor's bytes follow the last one's, and the last ends the file
        if start != end or stop < start:
            raise damaged("its header's offsets do not tile the data that follows it")
        end = stop
    if end != size - 8 - length:
        raise damaged("its header's offsets do not tile the data that follows it (truncated?)")
    return out


def _headers(directory: Path) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """Every weight of a directory's safetensors files, from their headers (nothing is loaded or mapped): key ->
    (shape, dtype, file name); a weight in two shards or an unreadable file is a CheckpointError."""
    found: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for file in sorted(directory.glob("*.safetensors")):
        for key, (shape, dtype) in safetensors_header(file).items():
            if key in found:
                raise CheckpointError(f"{directory}: weight {key} is in both {found[key][2]} and {file.name}; "
                                      "accepted: each weight in one shard")
            found[key] = (shape, dtype, file.name)
    return found


def stored_numel(directory: Path) -> int:
    """How many numbers a directory's safetensors files hold (0 where there are none or they cannot be read: their
    loading refuses them, with their name)."""
    try:
        return sum(math.prod(shape) for shape, _, _ in _headers(directory).values())
    except CheckpointError:
        return 0


def check_weights(directory: Path, config: dict) -> int:
    """Every weight the config's model needs, present once, with its shape and a float dtype, and no other; read from
    the safetensors headers (nothing is loaded). Returns how many numbers the weights hold."""
    import diffusers
    import torch

    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(f"{directory} has no .safetensors weights (convert .pt / .pth with probe convert)")
    found = _headers(directory)
    with torch.device("meta"):
        try:
            model = getattr(diffusers, config["_class_name"])(**_constructor_kwargs(config))
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{directory}/config.json does not make a {config['_class_name']}: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unknown = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{directory}: the weights lack {missing[0]}{more}, which the config's model needs (diffusers "
                              "would initialise them at random); accepted: weights for every parameter")
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CheckpointError(f"{directory}: weight {unknown[0]}{more} in {found[unknown[0]][2]} is not a parameter of the "
                              f"config's {config['_class_name']} (more layers than the config says?); accepted: the "
                              "weights of the config's model only")
    for key, shape in expected.items():
        stored, dtype, file = found[key]
        if stored != shape:
            raise CheckpointError(f"{directory}/{file}: {key} has shape {list(stored)}; the config's model needs "
                                  f"{list(shape)}")
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{directory}/{file}: {key} is {dtype}; accepted: float32, float16 or bfloat16 weights")
    return sum(math.prod(shape) for shape in expected.values())


def check_finite(module, where: Path) -> None:
    """Refuse a loaded module with NaN or infinite weights."""
    import torch

    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: weight {name} holds NaN or infinite values; accepted: finite weights")


SCHEDULER_NUMBERS = {"shift": (1e-3, 1e3), "flow_shift": (1e-3, 1e3), "num_train_timesteps": (1, 100_000)}


def check_scheduler_config(config: dict, path: Path, accepted_classes: tuple[str, ...]) -> dict:
    """A scheduler config whose class the sampler runs and whose numbers are in range."""
    if config.get("_class_name") not in accepted_classes:
        raise CheckpointError(f"{path} describes a {config.get('_class_name')}; accepted: {', '.join(accepted_classes)} "
                              "(or --scheduler euler)")
    for name, (low, high) in SCHEDULER_NUMBERS.items():
        value = config.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or \
                not low <= value <= high or (name == "num_train_timesteps" and not _integer(value)):
            raise CheckpointError(f"{path}: {name} = {value!r}; accepted: a number in {low:g}..{high:g}")
    for name in ("use_dynamic_shifting", "use_karras_sigmas", "use_flow_sigmas"):
        if name in config and not isinstance(config[name], bool):
            raise CheckpointError(f"{path}: {name} = {config[name]!r}; accepted: true or false")
    return config


def check_pipeline(root: Path) -> None:
    """Refuse a pipeline directory whose parts the toolkit would otherwise silently leave out."""
    index = root / "model_index.json"
    model_index = _read_json(index, "pipeline index") if index.is_file() else {}
    if (root / "transformer_2").exists() or model_index.get("transformer_2") not in (None, [None, None]) or \
            model_index.get("boundary_ratio") is not None:
        raise CheckpointError(f"{root} is a two-expert pipeline (Wan 2.2: transformer_2, boundary_ratio "
                              f"{model_index.get('boundary_ratio')}), whose second expert denoises the low-noise steps; "
                              "accepted: a single-transformer pipeline (Wan 2.1, SkyReels-V2, Self-Forcing, CausVid)")
    if model_index.get("expand_timesteps"):
        raise CheckpointError(f"{root} is a Wan 2.2 TI2V pipeline (expand_timesteps: per-token timesteps of an image "
                              "latent); accepted: a text-to-video or diffusion-forcing pipeline")
    if model_index.get("image_encoder") not in (None, [None, None]) or (root / "image_encoder").exists():
        raise CheckpointError(f"{root} is an image-to-video pipeline (image_encoder); accepted: a text-to-video or "
                              "diffusion-forcing pipeline")
