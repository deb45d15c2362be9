"""The run directory: the contract between probes, analyses and notebooks (see DESIGN.md).

    <run>/manifest.json          what was run (model, checkpoint sha256, config, layers, steps, ...), "complete": true
    <run>/features.safetensors   "layer{L}": float16 [F, S, N, D]
    <run>/attention.safetensors  "layer{L}": float32 [F, S, H, T]; "layer{L}.map": float32 [F, S, H, g, T*g]
    <run>/metrics.parquet        tidy table, one row per (layer, frame, metric)
    <run>/video.npz              "generated" and "ground_truth", uint8 [T, H, W, 3]

A run is written into a temporary sibling and swapped into place only when every file is there
(`scd.outputs`), so a directory that looks like a run is a complete run; an existing run is
replaced only with `force`. The manifest records every file's size and sha256, and `load_run`
checks the manifest against the files. A sweep (probes/sweep.py writes its shards) is read here too,
as a `MergedRun`.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probes.adapters.builtin import ROLES
from scd.outputs import OutputError, atomic_directory, check_output, input_path, readable
from scd.zoo import sha256

FORMAT = "scd-probes-run/4"  # 2: each file's size and sha256; 3: the pooled attention maps (bands); 4: centred cosine, CKA
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


def _layer_of(key: str) -> int | None:
    """15 for "layer15"; None for a layer's side entries such as "layer15.gram"."""
    name = key.removeprefix("layer")
    return int(name) if key.startswith("layer") and name.isdigit() else None


def _as_stored(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A layer's main tensor in the contract's dtype; side entries (Gram matrices, token indices) as given."""
    if not isinstance(key, str) or re.fullmatch(r"layer\d{1,4}(\.[a-z_]{1,32})?|input\.[a-z_]{1,32}", key) is None:
        raise RunError(f"unexpected entry {key!r}; accepted: entries named layer{{L}}, layer{{L}}.{{what}} or input.{{what}} "
                       "(what: lower-case letters and '_')")
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype).contiguous() if _layer_of(key) is not None else tensor.clone()  # clone: entries may share memory


def _checked_values(file: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuse a stored tensor whose values cannot be what the toolkit wrote: NaN or infinite attention,
    attention mass that does not sum to 1 over the clip's frames. (Features are stored as float16, where a model's
    activations beyond 65504 are honestly infinite: they are not refused.)"""
    if file.name == "attention.safetensors" and not bool(torch.isfinite(tensor).all()):
        raise RunError(f"{file}: {key} holds NaN or infinite values; the run is damaged: run it again")
    if file.name == "attention.safetensors" and _layer_of(key) is not None and tensor.numel():
        if float((tensor.double().sum(-1) - 1).abs().max()) > 1e-3 or float(tensor.min()) < 0:
            raise RunError(f"{file}: {key} is not attention mass (each frame's must be >= 0 and sum to 1); the run is "
                           "damaged: run it again")


def _digest(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def write_run(
    path: str | Path, manifest: dict, *, features: dict[str, torch.Tensor] | None = None,
    attention: dict[str, torch.Tensor] | None = None, metrics: pd.DataFrame | None = None,
    generated: np.ndarray, ground_truth: np.ndarray, force: bool = False,
) -> Path:
    """Write a complete run directory atomically; returns its path.

    `features` / `attention` map "layer{L}" to the layer's tensor (stored float16 / float32) and
    "layer{L}.{what}" to side entries stored as given (e.g. "layer15.gram", "layer15.tokens"). The
    manifest records each file's size and sha256, so a file swapped in from another run is refused.
    An existing `path` is replaced only with `force`, and only if it is a run (`scd.outputs`).
    """
    path = input_path(path, "path", "a path ending in a new name", RunError)
    try:
        check_output(path, "run", force)
    except OutputError as e:
        raise RunError(str(e).replace("--out ", "", 1)) from None
    for name, video in (("generated", generated), ("ground_truth", ground_truth)):
        if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise RunError(f"{name} must be uint8 [T, H, W, 3], got {getattr(video, 'dtype', type(video).__name__)} "
                           f"{getattr(video, 'shape', '')}")
    with atomic_directory(path, force=force) as tmp:
        save_file({k: _as_stored(k, v, torch.float16) for k, v in (features or {}).items()}, tmp / "features.safetensors")
        save_file({k: _as_stored(k, v, torch.float32) for k, v in (attention or {}).items()}, tmp / "attention.safetensors")
        table = metrics if metrics is not None else pd.DataFrame(columns=["layer", "frame", "metric", "value"])
        table.to_parquet(tmp / "metrics.parquet", index=False)
        np.savez_compressed(tmp / "video.npz", generated=generated, ground_truth=ground_truth)
        files = {name: _digest(tmp / name) for name in DATA_FILES}
        full = {"format": FORMAT, **manifest, "files": files, **environment(), "complete": True}
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
            return f.get_tensor(key)  # its values were checked by load_run (check_manifest), its bytes by sha256

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

    def centred_cosine(self, layer: int) -> torch.Tensor:
        """float64 [F, S, S]: per-token cosine between every pair of steps after each step's token mean is removed."""
        return self._tensor("features.safetensors", layer, "centred_cosine")

    def cka(self, layer: int) -> torch.Tensor:
        """float64 [F, S, S]: linear CKA between the token-centred features of every pair of steps."""
        return self._tensor("features.safetensors", layer, "cka")

    def input_cosine(self, kind: str = "token_cosine") -> torch.Tensor | None:
        """float64 [F, S, S]: cross-step similarity of the frame's input to the stepwise blocks (the first one's
        hook_resid_pre), the noise floor of finding 1: `kind` "token_cosine", "centred_cosine" or "cka"; None where
        the model has no such hook."""
        return self._input(kind)

    def input_features(self) -> torch.Tensor | None:
        """float16 [F, S, N, D]: the frame's input to the stepwise blocks at every step (full mode); else None."""
        return self._input("features")

    def _input(self, what: str) -> torch.Tensor | None:
        with safe_open(self.path / "features.safetensors", "pt") as f:
            return f.get_tensor(f"input.{what}") if f"input.{what}" in f.keys() else None

    def attention(self, layer: int) -> torch.Tensor:
        """float32 [F, S, H, T]: mass of each probed frame's queries on each frame of the clip."""
        return self._tensor("attention.safetensors", layer)

    def attention_map(self, layer: int) -> torch.Tensor:
        """float32 [F, S, H, g, T * g]: the pooled per-key attention of each probed frame's queries (g bands of
        its tokens) over every key of the clip (g bands per frame, frame-major); g is manifest["bands"]."""
        return self._tensor("attention.safetensors", layer, "map")

    @property
    def bands(self) -> int:
        """Bands per frame of the pooled attention maps."""
        return int(self.manifest.get("bands", 0))

    def role(self, layer: int) -> str:
        """What the layer is: "causal" (a baseline block), or SCD's "encoder" (once per frame) or "decoder"."""
        roles = dict(zip(self.manifest.get("layers", []), self.manifest.get("layer_roles", []), strict=False))
        return roles.get(layer, "causal")

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of a frame's tokens, row-major, as the model lays them out; None where the run does not
        say and the token count is not a square (runs recorded before the field)."""
        grid = self.manifest.get("token_grid")
        if grid is not None:
            return int(grid[0]), int(grid[1])
        n = int(self.manifest.get("tokens_per_frame", 0))
        side = round(n ** 0.5)
        return (side, side) if side * side == n and n > 0 else None

    @property
    def frames_per_block(self) -> int:
        """Frames denoised together in one chunk, seeing each other (1 for frame-causal models)."""
        config = self.manifest.get("config", {})
        return int(self.manifest.get("frames_per_block", config.get("frames_per_block", 1)))

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
        import zipfile

        try:
            with np.load(self.path / "video.npz", allow_pickle=False) as data:
                videos = data["generated"], data["ground_truth"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise RunError(f"{self.path}/video.npz cannot be read as the run's two videos; the run is damaged: "
                           "run it again") from None
        if any(v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3 for v in videos):
            raise RunError(f"{self.path}/video.npz does not hold uint8 [T, H, W, 3] videos; the run is damaged: run it again")
        return videos


def load_run(path: str | Path) -> Run:
    """Open a run directory, or a sweep's shards merged (`MergedRun`); an incomplete, inconsistent or foreign
    directory is refused with a one-line RunError: the manifest is checked against the files (their sizes and
    sha256, every listed layer stored with the shape the frames, steps and tokens give)."""
    path = input_path(path, "run", "a run directory written by probe run", RunError)
    path = readable(path)  # a replacement killed between its two renames: the old run, read where it lies aside
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (it does not exist or is a file); accepted: a directory "
                       "written by probe run")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        if is_sweep(path):  # shards of a sweep (probes/sweep.py): merged into one run
            return load_sweep(path)
        raise RunError(f"{path} is not a run directory: no manifest.json; accepted: a directory written by probe run")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise RunError(f"{manifest_path} is not valid JSON; the run is damaged: run it again") from None
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("scd-probes-run/"):
        raise RunError(f"{path} is not a run directory of this toolkit (manifest format is not {FORMAT!r})")
    if manifest["format"] != FORMAT:
        raise RunError(f"{path} was written in format {manifest['format']!r}; this version reads {FORMAT!r}: run it again")
    if manifest.get("complete") is not True:
        raise RunError(f"{path} is an incomplete run (manifest has no \"complete\": true); run it again")
    check_manifest(path, manifest)
    return Run(path, manifest)


def _field(path: Path, manifest: dict, name: str, kind, check=lambda v: True, accepted: str = ""):
    value = manifest.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
        raise RunError(f"{path}/manifest.json: {name} is {value!r}; accepted: {accepted or getattr(kind, '__name__', kind)}")
    return value


def _int_list(values) -> bool:
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
    layers = _field(path, m, "layers", list, lambda v: bool(v) and _int_list(v), "a non-empty list of block indices")
    roles = _field(path, m, "layer_roles", list, lambda v: len(v) == len(layers) and all(r in ROLES for r in v),
                   f"one of {ROLES} per layer")
    capture = _field(path, m, "capture", list, lambda v: bool(v) and set(v) <= {"features", "attention"},
                     "features and/or attention")
    mode = _field(path, m, "mode", str, lambda v: v in ("full", "stream"), "full or stream")
    frames = _field(path, m, "frames", list, lambda v: bool(v) and _int_list(v), "a non-empty list of frame indices")
    steps = _field(path, m, "steps", list, lambda v: bool(v) and _int_list(v), "a non-empty list of step indices")
    _field(path, m, "timesteps", list, lambda v: len(v) == len(steps) and all(isinstance(t, int | float) for t in v),
           "one number per step")
    tokens = _field(path, m, "tokens_per_frame", int, lambda v: v > 0, "a positive integer")
    num_frames = _field(path, m, "num_frames", int, lambda v: v > max(frames), "more than the last probed frame")
    bands = _field(path, m, "bands", int, lambda v: 1 <= v <= tokens, f"an integer in 1..{tokens}")
    _field(path, m, "config", dict)
    _field(path, m, "model", str)
    if m.get("token_grid") is not None:
        _field(path, m, "token_grid", list, lambda v: len(v) == 2 and _int_list(v) and v[0] * v[1] == tokens,
               f"[rows, columns] with rows x columns = {tokens} tokens, or null")
    if "generation" in m:
        _field(path, m, "generation", dict, accepted="an object (how the video was made)")
    if "frames_per_block" in m:
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
        for (file, key), want in expected.items():
            got = shapes.get((file, key))
            if got is None:
                raise RunError(f"{path}/{file}.safetensors lacks {key}, which the manifest lists; the run is damaged: "
                               "run it again")
            last = num_frames * bands if key.endswith(".map") else num_frames
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


# -- sweeps: the shards that probes/sweep.py writes, read as one run ---------------------------------------------

SHARD_FORMAT = "scd-probes-shard/1"
SHARD = re.compile(r"shard-(\d+)-of-(\d+)")


def is_sweep(path: str | Path) -> bool:
    """Does `path` hold shards (rather than a single run)?"""
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").exists() and any(
        SHARD.fullmatch(p.name) for p in path.iterdir() if p.is_dir())


def load_sweep(path: str | Path) -> MergedRun:
    """All shards of a sweep directory, merged; a RunError naming what is missing otherwise."""
    path = Path(path)
    shards = {}
    for directory in sorted(p for p in path.iterdir() if p.is_dir() and SHARD.fullmatch(p.name)):
        rank, size = map(int, SHARD.fullmatch(directory.name).groups())
        try:
            shard = json.loads((directory / "shard.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise RunError(f"{directory} is an incomplete shard (no readable shard.json); run that rank again") from None
        if not isinstance(shard, dict) or shard.get("format") != SHARD_FORMAT or shard.get("complete") is not True:
            raise RunError(f"{directory} is not a complete shard of this toolkit")
        items = shard.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) and _int_list([i.get("clip"), i.get("seed")])
                                                  and isinstance(i.get("run"), str) for i in items):
            raise RunError(f"{directory}/shard.json: items must be a list of {{clip, seed, run}}; run that rank again")
        shards.setdefault(size, {})[rank] = (directory, shard)
    if len(shards) != 1:
        raise RunError(f"{path} mixes shards of sweeps over {sorted(shards)} ranks; keep the shards of one sweep")
    (size, by_rank), = shards.items()
    missing = sorted(set(range(size)) - set(by_rank))
    if missing:
        raise RunError(f"{path} lacks the shards of ranks {missing} (of {size}); run them or copy them in")
    items = sorted((item["clip"], item["seed"], directory / Path(item["run"]).name)
                   for directory, shard in by_rank.values() for item in shard["items"])
    if not items:
        raise RunError(f"{path} is a sweep with no items")
    runs = [load_run(run) for *_, run in items]
    manifest = {**runs[0].manifest, "sweep": {"world_size": size, "items": [{"clip": c, "seed": s} for c, s, _ in items]}}
    return MergedRun(path, manifest, runs)


@dataclass
class MergedRun(Run):
    """A sweep read as one run: similarities and attention averaged over its items (see probes/sweep.py)."""
    items: list[Run] = field(default_factory=list)

    def _layers(self, name: str) -> list[int]:
        return self.items[0]._layers(name)

    def _tensor(self, name: str, layer: int, what: str = "") -> torch.Tensor:
        if name == "features.safetensors" and what in ("", "tokens"):  # token-level features: one item's, for PCA
            return self.items[0]._tensor(name, layer, what)
        tensors = [run._tensor(name, layer, what) for run in self.items]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise RunError(f"the runs of sweep {self.path} recorded layer {layer} with different shapes; "
                           "probe every item with the same frames and steps")
        return torch.stack(tensors).mean(0).to(tensors[0].dtype)

    def _input(self, what: str) -> torch.Tensor | None:
        if what == "features":  # token-level: one item's, as for the layers
            return self.items[0]._input(what)
        values = [run._input(what) for run in self.items]
        return None if any(v is None for v in values) else torch.stack(values).mean(0)

    @property
    def metrics(self) -> pd.DataFrame:
        """Every item's metrics, with its clip and seed."""
        return pd.concat([run.metrics.assign(clip=run.manifest.get("clip"), seed=run.manifest.get("seed"))
                          for run in self.items], ignore_index=True)

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        return self.items[0].video()
