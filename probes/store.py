"""The run directory: the contract between probes, analyses and notebooks (see DESIGN.md).

    <run>/manifest.json          what was run (model, checkpoint sha256, config, layers, steps, ...), "complete": true
    <run>/features.safetensors   "layer{L}": float16 [F, S, N, D]
    <run>/attention.safetensors  "layer{L}": float32 [F, S, H, T]
    <run>/metrics.parquet        tidy table, one row per (layer, frame, metric)
    <run>/video.npz              "generated" and "ground_truth", uint8 [T, H, W, 3]

A run is written into a temporary sibling and renamed into place only when every file is there,
so a directory that looks like a run is a complete run; an existing run is replaced only with `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "scd-probes-run/1"
PACKAGES = ("torch", "transformer-lens", "nnsight", "diffusers", "scd-probes")


class RunError(ValueError):
    """A run directory that cannot be written or read; the message is one line naming the problem."""


def environment() -> dict:
    """Package versions and the git revision of this checkout (None outside a git checkout)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        revision = None
    return {"versions": versions, "git_revision": revision}


def unwritable_reason(path: str | Path) -> str | None:
    """Why `path` could not be created (its nearest existing ancestor is a file or not writable), or None."""
    parent = Path(path).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no write permission in {parent}"
    return None


def _layer_of(key: str) -> int | None:
    """15 for "layer15"; None for a layer's side entries such as "layer15.gram"."""
    name = key.removeprefix("layer")
    return int(name) if key.startswith("layer") and name.isdigit() else None


def _as_stored(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A layer's main tensor in the contract's dtype; side entries (Gram matrices, token indices) as given."""
    if _layer_of(key) is None and not (key.startswith("layer") and "." in key):
        raise RunError(f"unexpected entry {key!r}; entries are named layer{{L}} or layer{{L}}.{{what}}")
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype).contiguous() if _layer_of(key) is not None else tensor.clone()  # clone: entries may share memory


def temporary_sibling(path: Path) -> Path:
    """A new hidden directory beside `path`, to be renamed to it once complete; with the permissions a
    plain mkdir would give (mkdtemp's 0700 would otherwise stay on the renamed result)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to fill; on success it replaces `path` (an old one is moved aside
    first, so a failure never leaves neither), on failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_run(
    path: str | Path, manifest: dict, *, features: dict[str, torch.Tensor] | None = None,
    attention: dict[str, torch.Tensor] | None = None, metrics: pd.DataFrame | None = None,
    generated: np.ndarray, ground_truth: np.ndarray, force: bool = False,
) -> Path:
    """Write a complete run directory atomically; returns its path.

    `features` / `attention` map "layer{L}" to the layer's tensor (stored float16 / float32) and
    "layer{L}.{what}" to side entries stored as given (e.g. "layer15.gram", "layer15.tokens").
    """
    path = Path(path)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty directory (made ahead by the user) holds no run to protect
    if path.exists() and not force:
        raise RunError(f"{path} already exists; pass --force to replace it")
    for name, video in (("generated", generated), ("ground_truth", ground_truth)):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise RunError(f"{name} must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    with atomic_directory(path) as tmp:
        save_file({k: _as_stored(k, v, torch.float16) for k, v in (features or {}).items()}, tmp / "features.safetensors")
        save_file({k: _as_stored(k, v, torch.float32) for k, v in (attention or {}).items()}, tmp / "attention.safetensors")
        table = metrics if metrics is not None else pd.DataFrame(columns=["layer", "frame", "metric", "value"])
        table.to_parquet(tmp / "metrics.parquet", index=False)
        np.savez_compressed(tmp / "video.npz", generated=generated, ground_truth=ground_truth)
        full = {"format": FORMAT, **manifest, **environment(), "complete": True}
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


@dataclass
class Run:
    """A complete run directory, read lazily."""
    path: Path
    manifest: dict

    def _layers(self, name: str) -> list[int]:
        with safe_open(self.path / name, "pt") as f:
            return sorted(layer for layer in map(_layer_of, f.keys()) if layer is not None)

    def _tensor(self, name: str, layer: int, what: str = "") -> torch.Tensor:
        key = f"layer{layer}" + (f".{what}" if what else "")
        with safe_open(self.path / name, "pt") as f:
            if key not in f.keys():
                recorded = ", ".join(str(layer) for layer in self._layers(name)) or "none"
                what = f" ({what})" if what else ""
                raise RunError(f"layer {layer}{what} is not in {self.path / name}; recorded layers: {recorded}")
            return f.get_tensor(key)

    def features(self, layer: int) -> torch.Tensor:
        """float16 [F, S, N, D]: per probed frame and denoising step, the frame's tokens at this layer
        (stream mode: a fixed subsample of N' tokens, `token_index`)."""
        return self._tensor("features.safetensors", layer)

    def token_index(self, layer: int) -> torch.Tensor:
        """int64 [N']: which of the frame's tokens `features(layer)` holds (all in `full` mode)."""
        return self._tensor("features.safetensors", layer, "tokens")

    def gram(self, layer: int) -> torch.Tensor:
        """float64 [F, S, S]: inner products of the flattened features of every pair of steps, per frame."""
        return self._tensor("features.safetensors", layer, "gram")

    def token_cosine(self, layer: int) -> torch.Tensor:
        """float64 [F, S, S]: per-token cosine between every pair of steps, averaged over all N tokens."""
        return self._tensor("features.safetensors", layer, "token_cosine")

    def attention(self, layer: int) -> torch.Tensor:
        """float32 [F, S, H, T]: mass of each probed frame's queries on each frame of the clip."""
        return self._tensor("attention.safetensors", layer)

    def role(self, layer: int) -> str:
        """What the layer is: "causal" (a baseline block), or SCD's "encoder" (once per frame) or "decoder"."""
        roles = dict(zip(self.manifest.get("layers", []), self.manifest.get("layer_roles", []), strict=False))
        return roles.get(layer, "causal")

    @property
    def depth(self) -> int:
        """Blocks of the probed model (SCD: encoder and decoder together)."""
        config = self.manifest.get("config", {})
        if "encoder_depth" in config:
            return int(config["encoder_depth"]) + int(config["decoder_depth"])
        return int(config.get("depth", config.get("num_layers", 30)))  # num_layers: diffusers transformers

    @property
    def stepwise_layers(self) -> list[int]:
        """Feature layers recorded at every denoising step (all but SCD's encoder layers)."""
        return [layer for layer in self.feature_layers if self.role(layer) != "encoder"]

    @property
    def feature_layers(self) -> list[int]:
        return self._layers("features.safetensors")

    @property
    def attention_layers(self) -> list[int]:
        return self._layers("attention.safetensors")

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "metrics.parquet")

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        """(generated, ground truth), uint8 [T, H, W, 3] each."""
        with np.load(self.path / "video.npz") as data:
            return data["generated"], data["ground_truth"]


def load_run(path: str | Path) -> Run:
    """Open a run directory, or a sweep's shards merged (`probes.sweep.MergedRun`); an incomplete or foreign
    directory is refused with a one-line RunError."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (it does not exist or is a file)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        from probes.sweep import is_sweep, load_sweep

        if is_sweep(path):  # shards of a sweep (probes/sweep.py): merged into one run
            return load_sweep(path)
        raise RunError(f"{path} is not a run directory: no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{manifest_path} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunError(f"{path} is not a run directory of this toolkit (manifest format is not {FORMAT!r})")
    if manifest.get("complete") is not True:
        raise RunError(f"{path} is an incomplete run (manifest has no \"complete\": true); run it again")
    for name in ("features.safetensors", "attention.safetensors", "metrics.parquet", "video.npz"):
        if not (path / name).is_file():
            raise RunError(f"{path} is missing {name}")
    for name in ("features.safetensors", "attention.safetensors"):
        try:
            with safe_open(path / name, "pt"):
                pass
        except (SafetensorError, OSError):
            raise RunError(f"{path / name} is corrupt or truncated") from None
    return Run(path, manifest)
