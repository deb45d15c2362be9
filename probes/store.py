"""The run directory: a `probes.recording.Recording` on disk (docs/run-directory.md), written and checked here.

    <run>/manifest.json          what was run (model, checkpoint sha256, config, layers, steps, ...), "complete": true
    <run>/features.safetensors   "layer{L}": float16 [F, S, N, D]
    <run>/attention.safetensors  "layer{L}": float32 [F, S, H, T]; "layer{L}.map": float32 [F, S, H, g, T*g];
                                 "layer{L}.distance" [F, S, H, T]; "layer{L}.regions" [F, S, H, 4]
    <run>/metrics.parquet        tidy table, one row per (layer, frame, metric)
    <run>/video.npz              "generated" and "ground_truth", uint8 [T, H, W, 3]

A run is written into a temporary sibling and swapped into place only when every file is there
(`scd.files`), so a directory that looks like a run is a complete run; an existing run is
replaced only with `force`. The manifest records every file's size and sha256, and `load_run`
checks the manifest against the files (`check_manifest`). Reading is `probes.recording.load_run`; a
sweep's shards (probes/sweep.py) are read there as a `MergedRun`.
"""

from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probes.attention import derived_entries
from scd.contract import ROLES
from scd.files import CheckedOutput, atomic_directory, checked_output, sha256

FORMAT = "scd-probes-run/6"  # 2: files' sha256; 3: pooled attention maps (bands); 4: centred cosine, CKA; 5: depth, block_roles;
# 6: attention by temporal distance and by cache region, the sampling (sampler, timesteps, window, sinks, RoPE)
DATA_FILES = ("features.safetensors", "attention.safetensors", "metrics.parquet", "video.npz")
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


def layer_of(key: str) -> int | None:
    """15 for "layer15"; None for a layer's side entries such as "layer15.gram"."""
    name = key.removeprefix("layer")
    return int(name) if key.startswith("layer") and name.isdigit() else None


def as_stored(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A layer's main tensor in the contract's dtype; side entries (Gram matrices, token indices) as given."""
    if not isinstance(key, str) or re.fullmatch(r"layer\d{1,4}(\.[a-z_]{1,32})?|input\.[a-z_]{1,32}", key) is None:
        raise RunError(f"unexpected entry {key!r}; accepted: entries named layer{{L}}, layer{{L}}.{{what}} or input.{{what}} "
                       "(what: lower-case letters and '_')")
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype).contiguous() if layer_of(key) is not None else tensor.clone()  # clone: entries may share memory


def _checked_values(file: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuse a stored tensor whose values cannot be what the toolkit wrote: NaN or infinite attention,
    attention mass that does not sum to 1 over the clip's frames. (Features are stored as float16, where a model's
    activations beyond 65504 are honestly infinite: they are not refused.)"""
    if file.name == "attention.safetensors" and not bool(torch.isfinite(tensor).all()):
        raise RunError(f"{file}: {key} holds NaN or infinite values; the run is damaged: run it again")
    if file.name == "attention.safetensors" and layer_of(key) is not None and tensor.numel():
        if float((tensor.double().sum(-1) - 1).abs().max()) > 1e-3 or float(tensor.min()) < 0:
            raise RunError(f"{file}: {key} is not attention mass (each frame's must be >= 0 and sum to 1); the run is "
                           "damaged: run it again")


def _digest(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def write_run(
    path: str | Path | CheckedOutput, manifest: dict, *, features: dict[str, torch.Tensor] | None = None,
    attention: dict[str, torch.Tensor] | None = None, metrics: pd.DataFrame | None = None,
    generated: np.ndarray, ground_truth: np.ndarray, force: bool = False,
) -> Path:
    """Write a complete run directory atomically; returns its path.

    `features` / `attention` map "layer{L}" to the layer's tensor (stored float16 / float32) and
    "layer{L}.{what}" to side entries stored as given (e.g. "layer15.gram", "layer15.tokens"); the attention's
    "layer{L}.distance" and "layer{L}.regions" are derived from its mass where not given. The
    manifest records each file's size and sha256, so a file swapped in from another run is refused.
    An existing `path` is replaced only with `force`, and only if it is a run (`scd.files`).
    """
    target = checked_output(path, "run", force, flag="path", error=RunError)  # a CheckedOutput: trusted
    path, force = target.path, target.force
    for name, video in (("generated", generated), ("ground_truth", ground_truth)):
        if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise RunError(f"{name} must be uint8 [T, H, W, 3], got {getattr(video, 'dtype', type(video).__name__)} "
                           f"{getattr(video, 'shape', '')}")
    attention = dict(attention or {})
    attention |= derived_entries(attention, manifest.get("frames") or [], manifest.get("frames_per_block") or 1,
                                 (manifest.get("sampling") or {}).get("sink_frames") or 0)  # where not given
    with atomic_directory(path, force=force) as tmp:
        save_file({k: as_stored(k, v, torch.float16) for k, v in (features or {}).items()}, tmp / "features.safetensors")
        save_file({k: as_stored(k, v, torch.float32) for k, v in attention.items()}, tmp / "attention.safetensors")
        table = metrics if metrics is not None else pd.DataFrame(columns=["layer", "frame", "metric", "value"])
        table.to_parquet(tmp / "metrics.parquet", index=False)
        np.savez_compressed(tmp / "video.npz", generated=generated, ground_truth=ground_truth)
        files = {name: _digest(tmp / name) for name in DATA_FILES}
        full = {"format": FORMAT, **manifest, "files": files, **environment(), "complete": True}
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


def _field(path: Path, manifest: dict, name: str, kind, check=lambda v: True, accepted: str = ""):
    value = manifest.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
        raise RunError(f"{path}/manifest.json: {name} is {value!r}; accepted: {accepted or getattr(kind, '__name__', kind)}")
    return value


def int_list(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def check_manifest(path: Path, m: dict) -> None:
    """Refuse a run whose manifest does not describe its files (one RunError naming the first disagreement)."""
    files = _field(path, m, "files", dict, lambda v: set(v) == set(DATA_FILES), f"an entry for each of {DATA_FILES}")
    for name in DATA_FILES:
        file = path / name
        if not file.is_file():
            raise RunError(f"{path} is missing {name}; the run is damaged: run it again")
        expected = files[name]
        if not isinstance(expected, dict) or file.stat().st_size != expected.get("bytes"):
            raise RunError(f"{file} is not the file this run wrote (size differs: truncated or replaced); run it again")
        if sha256(file) != expected.get("sha256"):
            raise RunError(f"{file} is not the file this run wrote (sha256 differs: swapped or modified); run it again")
    depth = _field(path, m, "depth", int, lambda v: 1 <= v <= 4096, "the model's block count, 1..4096")
    block_roles = _field(path, m, "block_roles", list, lambda v: len(v) == depth and all(r in ROLES for r in v),
                         f"one of {ROLES} per block ({depth})")
    layers = _field(path, m, "layers", list, lambda v: bool(v) and int_list(v) and max(v) < depth,
                    f"a non-empty list of block indices in 0..{depth - 1}")
    roles = _field(path, m, "layer_roles", list, lambda v: v == [block_roles[layer] for layer in layers],
                   "the block_roles of the probed layers")
    capture = _field(path, m, "capture", list, lambda v: bool(v) and set(v) <= {"features", "attention"},
                     "features and/or attention")
    mode = _field(path, m, "mode", str, lambda v: v in ("full", "stream"), "full or stream")
    frames = _field(path, m, "frames", list, lambda v: bool(v) and int_list(v), "a non-empty list of frame indices")
    steps = _field(path, m, "steps", list, lambda v: bool(v) and int_list(v), "a non-empty list of step indices")
    _field(path, m, "timesteps", list, lambda v: len(v) == len(steps) and all(isinstance(t, int | float) for t in v),
           "one number per step")
    tokens = _field(path, m, "tokens_per_frame", int, lambda v: v > 0, "a positive integer")
    num_frames = _field(path, m, "num_frames", int, lambda v: v > max(frames), "more than the last probed frame")
    bands = _field(path, m, "bands", int, lambda v: 1 <= v <= tokens, f"an integer in 1..{tokens}")
    _field(path, m, "config", dict)
    _field(path, m, "model", str)
    if m.get("token_grid") is not None:
        _field(path, m, "token_grid", list, lambda v: len(v) == 2 and int_list(v) and v[0] * v[1] == tokens,
               f"[rows, columns] with rows x columns = {tokens} tokens, or null")
    if "generation" in m:
        _field(path, m, "generation", dict, accepted="an object (how the video was made)")
    _field(path, m, "frames_per_block", int, lambda v: 1 <= v <= 1024, "an integer in 1..1024")
    try:
        table = pd.read_parquet(path / "metrics.parquet")
    except Exception:  # pyarrow raises its own types for a damaged file  # noqa: BLE001
        raise RunError(f"{path}/metrics.parquet cannot be read as a table; the run is damaged: run it again") from None
    import zipfile

    try:
        with zipfile.ZipFile(path / "video.npz") as videos:
            names = set(videos.namelist())
    except (OSError, zipfile.BadZipFile):
        names = set()
    if not {"generated.npy", "ground_truth.npy"} <= names:
        raise RunError(f"{path}/video.npz cannot be read as the run's two videos; the run is damaged: run it again")
    with safe_open(path / "attention.safetensors", "pt") as f:  # small: [F, S, H, T] and the pooled maps
        for key in f.keys():
            _checked_values(path / "attention.safetensors", key, f.get_tensor(key))
    if list(table.columns)[:4] != ["layer", "frame", "metric", "value"]:
        raise RunError(f"{path}/metrics.parquet has columns {list(table.columns)}; accepted: layer, frame, metric, value "
                       "(the run is damaged: run it again)")
    kinds = {"layer": "i", "frame": "i", "value": "f"}  # an empty table (no capture) has object columns: nothing to read
    wrong = [c for c, kind in kinds.items() if len(table) and table[c].dtype.kind != kind]
    if wrong or (len(table) and not table["metric"].map(lambda v: isinstance(v, str)).all()):
        what = f"a {wrong[0]} column of {table[wrong[0]].dtype}" if wrong else "a metric that is not text"
        raise RunError(f"{path}/metrics.parquet holds {what}; accepted: integer layer and frame, text metric, float "
                       "value (the run is damaged: run it again)")
    with safe_open(path / "features.safetensors", "pt") as fe, safe_open(path / "attention.safetensors", "pt") as at:
        shapes = {("features", k): tuple(fe.get_slice(k).get_shape()) for k in fe.keys()}
        shapes |= {("attention", k): tuple(at.get_slice(k).get_shape()) for k in at.keys()}
    for layer, role in zip(layers, roles, strict=True):
        S = 1 if role == "encoder" else len(steps)
        expected = {}
        if "features" in capture:
            kept = shapes.get(("features", f"layer{layer}.tokens"), (None,))[0]
            n = tokens if mode == "full" else kept
            expected |= {("features", f"layer{layer}"): (len(frames), S, n), ("features", f"layer{layer}.tokens"): (kept,),
                         ("features", f"layer{layer}.gram"): (len(frames), S, S),
                         ("features", f"layer{layer}.token_cosine"): (len(frames), S, S),
                         ("features", f"layer{layer}.centred_cosine"): (len(frames), S, S),
                         ("features", f"layer{layer}.cka"): (len(frames), S, S)}
        if "attention" in capture:
            expected[("attention", f"layer{layer}")] = (len(frames), S)
            expected[("attention", f"layer{layer}.map")] = (len(frames), S)
            expected[("attention", f"layer{layer}.distance")] = (len(frames), S)
            expected[("attention", f"layer{layer}.regions")] = (len(frames), S)
        for (file, key), want in expected.items():
            got = shapes.get((file, key))
            if got is None:
                raise RunError(f"{path}/{file}.safetensors lacks {key}, which the manifest lists; the run is damaged: "
                               "run it again")
            last = num_frames * bands if key.endswith(".map") else num_frames
            last = 4 if key.endswith(".regions") else last
            if got[:len(want)] != want or (file == "attention" and got[-1] != last) or \
                    (key.endswith(".map") and got[-2] != bands):
                raise RunError(f"{path}/{file}.safetensors: {key} has shape {list(got)}, but the manifest's frames, steps "
                               f"and tokens give {list(want)}...; the run is damaged: run it again")
    try:
        with np.load(path / "video.npz") as video:
            generated, truth = video["generated"].shape, video["ground_truth"].shape
    except (OSError, KeyError, ValueError):
        raise RunError(f"{path}/video.npz is corrupt or lacks generated / ground_truth; run it again") from None
    shown = m.get("video_frames", num_frames)  # a VAE decodes T latent frames into more pixel frames
    if generated[0] != shown or truth[0] not in (0, num_frames):
        raise RunError(f"{path}/video.npz holds {generated[0]} frames, the manifest {shown}; run it again")



SHARD_FORMAT = "scd-probes-shard/1"
SHARD = re.compile(r"shard-(\d+)-of-(\d+)")
