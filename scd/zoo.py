"""Named models and checkpoints: `load_model("baseline" | path)`, `save_model`.

A checkpoint is a `.safetensors` file of weights and a JSON config beside it (`{stem}.json`, or
`config.json` next to `model.safetensors` in a directory). The config records the model family,
its size and the sha256 of the weights, so a truncated, corrupt or mismatched file is refused with
a one-line `CheckpointError` instead of a traceback or a silent partial load. Never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scd.baseline import BASELINE_SIZES, BaselineConfig, CausalVideoDiffuser
from scd.scd_model import SCD_SIZES, SCDConfig, SeparableCausalDiffuser

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "baseline": (BaselineConfig, CausalVideoDiffuser),
    "scd": (SCDConfig, SeparableCausalDiffuser),
}
SIZES: dict[str, dict] = {"baseline": BASELINE_SIZES, "scd": SCD_SIZES}  # named sizes of each family


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line naming the problem."""


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped in scd/checkpoints/."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.safetensors") if p.with_suffix(".json").exists())


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model(config: dict) -> nn.Module:
    """A freshly initialised model from a config dict (`family` plus the family's config fields)."""
    config = dict(config)
    family = config.pop("family", None)
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; accepted: {', '.join(FAMILIES)}")
    config_cls, model_cls = FAMILIES[family]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"unknown {family} config fields {unknown}; accepted: {sorted(known)}")
    return model_cls(config_cls(**config))


def config_path_for(weights: Path) -> Path:
    """The JSON config beside a weights file: `config.json` for `model.safetensors`, else `{stem}.json`."""
    return weights.parent / "config.json" if weights.name == "model.safetensors" else weights.with_suffix(".json")


def resolve(name_or_path: str | Path) -> tuple[Path, Path]:
    """(weights, config) paths of a shipped name, a checkpoint directory or a .safetensors file."""
    if isinstance(name_or_path, str) and name_or_path in shipped_models():
        return CHECKPOINT_DIR / f"{name_or_path}.safetensors", CHECKPOINT_DIR / f"{name_or_path}.json"
    path = Path(name_or_path)
    if path.is_dir():
        weights, config = path / "model.safetensors", path / "config.json"
    elif path.suffix == ".safetensors":
        weights, config = path, config_path_for(path)
    else:
        raise CheckpointError(
            f"unknown model {str(name_or_path)!r}; accepted: {', '.join(shipped_models()) or '(none shipped)'}, "
            "a checkpoint directory, or a .safetensors file with a .json config beside it")
    for p in (weights, config):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}")
    return weights, config


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a model in eval mode: "baseline", a checkpoint directory, or a .safetensors file."""
    weights, config_path = resolve(name_or_path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"config {config_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"config {config_path} must be a JSON object")
    expected_sha = config.pop("sha256", None)
    config.pop("dtype", None)
    digest = sha256(weights)
    if expected_sha is not None and digest != expected_sha:
        raise CheckpointError(f"checkpoint {weights} does not match the sha256 in {config_path.name} (truncated or replaced?)")
    try:
        model = build_model(config)
    except TypeError as e:
        raise CheckpointError(f"config {config_path} is invalid: {e}") from None
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
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    # Where the weights came from, for the manifests of runs made with this model.
    model.checkpoint = {"name": str(name_or_path), "path": str(weights), "sha256": digest}
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: nn.Module, weights_path: str | Path, dtype: torch.dtype = torch.float32,
               config_path: str | Path | None = None) -> Path:
    """Write weights (atomically) and the JSON config with their sha256; returns the weights path."""
    weights_path = Path(weights_path)
    config_path = config_path_for(weights_path) if config_path is None else Path(config_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    save_file(state, tmp)
    os.replace(tmp, weights_path)
    config = {**model.get_config(), "dtype": str(dtype).removeprefix("torch."), "sha256": sha256(weights_path)}
    tmp = Path(str(config_path) + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, config_path)
    return weights_path
