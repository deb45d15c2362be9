"""`Recording`: what a probe recorded, live (a `Probe` after its `with` block) or read back (`load_run`): one type.

    import probes, scd
    rec = probes.record(scd.load_model("baseline"), 0, layers=[15])   # clip 0 of the val benchmark
    rec.token_cosine(15, frame=4)                                      # [S, S]: layer 15, video frame 4

Every analysis and figure takes a Recording, live or loaded, and reads it through the methods below;
they return the same values for a live recording and its saved-and-loaded copy (tested), because a
live recording holds exactly what its run directory would (features float16, attention float32,
similarities float64). Per-frame results are stacked over `frames` in order ([F, ...]); `frame=`
picks one by its video frame number.

A run directory (`probes.store`) is the recording on disk; a sweep's shards are read as a
`MergedRun`, a Recording whose similarities and attention are means over its items.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from probes.reductions import cosine_from_gram, off_diagonal
from probes.store import (
    FORMAT,
    SHARD,
    SHARD_FORMAT,
    RunError,
    as_stored,
    check_manifest,
    int_list,
    layer_of,
    write_run,
)
from scd.contract import CachePolicy
from scd.files import input_path, readable

FILES = {"features": "features.safetensors", "attention": "attention.safetensors"}
BOOKKEEPING = ("format", "files", "versions", "git_revision", "complete")  # what write_run adds to a manifest


class _Files:
    """The tensors, table and videos of a run directory, read lazily (their bytes were checked by load_run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keys(self, name: str) -> list[str]:
        with safe_open(self.path / name, "pt") as f:
            return list(f.keys())

    def get(self, name: str, key: str) -> torch.Tensor:
        with safe_open(self.path / name, "pt") as f:
            return f.get_tensor(key)

    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "metrics.parquet")

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(self.path / "video.npz", allow_pickle=False) as data:
                videos = data["generated"], data["ground_truth"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise RunError(f"{self.path}/video.npz cannot be read as the run's two videos; the run is damaged: "
                           "run it again") from None
        if any(v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3 for v in videos):
            raise RunError(f"{self.path}/video.npz does not hold uint8 [T, H, W, 3] videos; the run is damaged: run it again")
        return videos


class _Memory:
    """The same, held in memory: a live recording (tensors already in the dtypes a run directory stores)."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], metrics: pd.DataFrame, generated: np.ndarray,
                 ground_truth: np.ndarray) -> None:
        self.tensors, self._metrics, self._video = tensors, metrics, (generated, ground_truth)

    def keys(self, name: str) -> list[str]:
        return list(self.tensors[name])

    def get(self, name: str, key: str) -> torch.Tensor:
        return self.tensors[name][key].clone()  # a caller's in-place edit must not change the recording

    def metrics(self) -> pd.DataFrame:
        return self._metrics.copy()

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        return self._video[0].copy(), self._video[1].copy()


def memory_source(manifest: dict, features: dict[str, torch.Tensor], attention: dict[str, torch.Tensor],
                  generated: np.ndarray, ground_truth: np.ndarray) -> _Memory:
    """A live recording's source: the entries as a run directory stores them, and the metrics table computed
    from those stored values (so that it equals the table a saved copy reads back)."""
    stored = {FILES["features"]: {k: as_stored(k, v, torch.float16) for k, v in features.items()},
              FILES["attention"]: {k: as_stored(k, v, torch.float32) for k, v in attention.items()}}
    source = _Memory(stored, pd.DataFrame(), generated, ground_truth)
    source._metrics = metrics_table(Recording(manifest, source))
    return source


class Recording:
    """Per (layer, probed frame, step): features, cross-step similarities and attention (see the module docstring)."""

    def __init__(self, manifest: dict, source: _Files | _Memory | None, path: Path | None = None) -> None:
        self.manifest, self._source, self.path = manifest, source, path

    # -- what was recorded --------------------------------------------------------------------------

    def _recorded(self) -> _Files | _Memory:
        """The source of the tensors; a Probe before anything was recorded overrides this with its refusal."""
        return self._source

    @property
    def layers(self) -> list[int]:
        """The probed block indices, in the order given."""
        return list(self.manifest["layers"])

    @property
    def frames(self) -> list[int]:
        """The probed video frame numbers, in order: the first axis of every per-frame result."""
        self._recorded()
        return list(self.manifest["frames"])

    @property
    def steps(self) -> list[int]:
        """The recorded denoising step indices (the second axis, S, of the stepwise layers' results)."""
        self._recorded()
        return list(self.manifest["steps"])

    @property
    def timesteps(self) -> list[float]:
        """The scheduler's timestep at each recorded step."""
        self._recorded()
        return list(self.manifest["timesteps"])

    @property
    def depth(self) -> int:
        """Blocks of the probed model (SCD: encoder and decoder together)."""
        return int(self.manifest["depth"])

    def role(self, layer: int) -> str:
        """What block `layer` is (`scd.contract.ROLES`): causal, encoder, decoder or frame-local."""
        roles = self.manifest["block_roles"]
        if not isinstance(layer, int) or not 0 <= layer < len(roles):
            raise RunError(f"layer {layer!r} is not a block of this {len(roles)}-block model; accepted: 0..{len(roles) - 1}")
        return roles[layer]

    @property
    def bands(self) -> int:
        """Bands per frame of the pooled attention maps."""
        return int(self.manifest["bands"])

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of a frame's tokens, row-major, as the model lays them out; None where not on a grid."""
        grid = self.manifest.get("token_grid")
        return (int(grid[0]), int(grid[1])) if grid is not None else None

    @property
    def cache_policy(self) -> CachePolicy:
        """Which finished frames each chunk attended to when the run was generated (the manifest's `sampling`:
        window, sink frames, RoPE policy); every finished frame for a run recorded without one."""
        sampling = self.manifest.get("sampling") or {}
        return CachePolicy(sampling.get("window"), sampling.get("sink_frames") or 0, sampling.get("rope") or "absolute")

    @property
    def frames_per_block(self) -> int:
        """Frames denoised together in one chunk, seeing each other (1 for frame-causal models)."""
        return int(self.manifest["frames_per_block"])

    @property
    def items(self) -> list[Recording]:
        """The recordings this one is made of: a sweep's items (`MergedRun`), else itself alone."""
        return [self]

    @property
    def feature_layers(self) -> list[int]:
        """Layers whose features were captured."""
        return self._layers(FILES["features"])

    @property
    def attention_layers(self) -> list[int]:
        """Layers whose attention was captured."""
        return self._layers(FILES["attention"])

    @property
    def text_share_layers(self) -> list[int]:
        """Attention layers with the text's share of their update recorded (blocks with cross-attention: Wan)."""
        keys = self._recorded().keys(FILES["attention"])
        return [layer for layer in self.attention_layers if f"layer{layer}.text_share" in keys]

    @property
    def stepwise_layers(self) -> list[int]:
        """Feature layers recorded at every denoising step (all but SCD's encoder layers)."""
        return [layer for layer in self.feature_layers if self.role(layer) != "encoder"]

    # -- tensors --------------------------------------------------------------------------------------

    def _layers(self, name: str) -> list[int]:
        return sorted(layer for layer in map(layer_of, self._recorded().keys(name)) if layer is not None)

    def _tensor(self, name: str, layer: int, what: str = "") -> torch.Tensor:
        if not isinstance(layer, int) or isinstance(layer, bool):  # "1" or "1.gram" would name another entry
            raise RunError(f"layer {layer!r} is not a block index; accepted: an integer, one of the recorded layers "
                           f"{', '.join(map(str, self._layers(name))) or '(none)'}")
        key = f"layer{layer}" + (f".{what}" if what else "")
        source = self._recorded()
        if key not in source.keys(name):
            recorded = ", ".join(str(layer) for layer in self._layers(name)) or "none"
            kind = "features" if name == FILES["features"] else "attention"
            raise RunError(f"layer {layer}{f' ({what})' if what else ''} has no recorded {kind}; recorded layers: {recorded}")
        return source.get(name, key)

    def _input(self, what: str) -> torch.Tensor | None:
        source = self._recorded()
        key = f"input.{what}"
        return source.get(FILES["features"], key) if key in source.keys(FILES["features"]) else None

    def _at(self, tensor: torch.Tensor | None, frame: int | None) -> torch.Tensor | None:
        """The whole [F, ...] tensor, or one probed frame's slice by its video frame number."""
        if frame is None or tensor is None:
            return tensor
        frames = self.frames
        if not isinstance(frame, int) or isinstance(frame, bool) or frame not in frames:
            raise RunError(f"frame {frame!r} was not recorded; recorded frames: {', '.join(map(str, frames))}")
        return tensor[frames.index(frame)]

    def features(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float16 [F, S, N, D]: per probed frame and denoising step, the frame's tokens at this layer
        (stream mode: a fixed subsample of N' tokens, `token_index`); S = 1 for SCD's encoder layers."""
        return self._at(self._tensor(FILES["features"], layer), frame)

    def token_index(self, layer: int) -> torch.Tensor:
        """int64 [N']: which of the frame's tokens `features(layer)` holds (all in `full` mode)."""
        return self._tensor(FILES["features"], layer, "tokens")

    def gram(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float64 [F, S, S]: inner products of the flattened features of every pair of steps, per frame."""
        return self._at(self._tensor(FILES["features"], layer, "gram"), frame)

    def token_cosine(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float64 [F, S, S]: per-token cosine between every pair of steps, averaged over all N tokens."""
        return self._at(self._tensor(FILES["features"], layer, "token_cosine"), frame)

    def centred_cosine(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float64 [F, S, S]: per-token cosine between every pair of steps after each step's token mean is removed."""
        return self._at(self._tensor(FILES["features"], layer, "centred_cosine"), frame)

    def cka(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float64 [F, S, S]: linear CKA between the token-centred features of every pair of steps."""
        return self._at(self._tensor(FILES["features"], layer, "cka"), frame)

    def input_cosine(self, kind: str = "token_cosine", frame: int | None = None) -> torch.Tensor | None:
        """float64 [F, S, S]: cross-step similarity of the frame's input to the stepwise blocks (the first one's
        hook_resid_pre), the noise floor of finding 1: `kind` "token_cosine", "centred_cosine" or "cka"; None where
        the model has no such hook."""
        if kind not in ("token_cosine", "centred_cosine", "cka"):
            raise RunError(f"kind {kind!r}; accepted: token_cosine, centred_cosine, cka")
        return self._at(self._input(kind), frame)

    def input_features(self, frame: int | None = None) -> torch.Tensor | None:
        """float16 [F, S, N, D]: the frame's input to the stepwise blocks at every step (full mode); else None."""
        return self._at(self._input("features"), frame)

    def attention(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float32 [F, S, H, T]: mass of each probed frame's queries on each frame of the clip (sums to 1 over T)."""
        return self._at(self._tensor(FILES["attention"], layer), frame)

    def attention_by_distance(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float32 [F, S, H, T]: each probed frame's attention mass by temporal distance, d frames before the end of
        its chunk (d = 0: the chunk's last frame; `probes.attention.mass_by_distance`)."""
        return self._at(self._tensor(FILES["attention"], layer, "distance"), frame)

    def attention_regions(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float32 [F, S, H, 4]: mass on the own chunk, the previous chunk, the sink frames and elsewhere in the
        window (`probes.attention.REGIONS`; sinks as the sampler's cache policy had them, 0 without a window)."""
        return self._at(self._tensor(FILES["attention"], layer, "regions"), frame)

    def attention_text_share(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float32 [F, S]: for blocks with cross-attention to a text (the Wan families), the share of the block's
        attention update on each probed frame that comes from the text: ||cross|| / (||self|| + ||cross||), Frobenius
        norms over the frame's tokens of the cross-attention's output and of the self-attention's gated update."""
        return self._at(self._tensor(FILES["attention"], layer, "text_share"), frame)

    def attention_map(self, layer: int, frame: int | None = None) -> torch.Tensor:
        """float32 [F, S, H, g, T * g]: the pooled per-key attention of each probed frame's queries (g bands of
        its tokens) over every key of the clip (g bands per frame, frame-major); g is `bands`."""
        return self._at(self._tensor(FILES["attention"], layer, "map"), frame)

    @property
    def metrics(self) -> pd.DataFrame:
        """Tidy table, one row per (layer, frame, metric): cross-step cosine summaries, attention shares."""
        return self._recorded().metrics()

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        """(generated, ground truth), uint8 [T, H, W, 3] each (ground truth [0, ...] where there is none)."""
        return self._recorded().video()

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write this recording as a run directory (`probes.store`); an existing run is replaced only with `force`."""
        source = self._recorded()
        manifest = {k: v for k, v in self.manifest.items() if k not in BOOKKEEPING}
        tensors = {name: {key: source.get(name, key) for key in source.keys(name)} for name in FILES.values()}
        generated, truth = source.video()
        return write_run(path, manifest, features=tensors[FILES["features"]], attention=tensors[FILES["attention"]],
                         metrics=source.metrics(), generated=generated, ground_truth=truth, force=force)

    def __repr__(self) -> str:
        where = f"{self.path}" if self.path is not None else "live"
        return f"<Recording {self.manifest.get('model')} layers {self.manifest.get('layers')} ({where})>"


def metrics_table(recording: Recording) -> pd.DataFrame:
    """The run's metrics table, one row per (layer, frame, metric), from its recorded tensors: mean and minimum
    of the off-diagonal cross-step cosines (per token, and of the flattened features), the attention share on
    frames before the frame's chunk and on the frame itself."""
    rows = []
    capture = recording.manifest["capture"]
    for layer in recording.layers:
        if "features" in capture:
            for name, matrices in (("token_cosine", recording.token_cosine(layer)),
                                   ("flat_cosine", cosine_from_gram(recording.gram(layer)))):
                if matrices.shape[-1] < 2:  # one pass per frame (SCD's encoder): no steps to compare
                    continue
                values = off_diagonal(matrices)  # [F, S (S - 1)]
                means, minima = values.mean(-1).tolist(), values.amin(-1).tolist()
                for frame, mean, minimum in zip(recording.frames, means, minima, strict=True):
                    rows.append((layer, frame, f"{name}_mean", mean))
                    rows.append((layer, frame, f"{name}_min", minimum))
        if "attention" in capture:
            k = recording.frames_per_block
            for frame, mass in zip(recording.frames, recording.attention(layer), strict=True):
                # before the frame's chunk (its chunk is its own, as analyses.sparsity reads it; hidden frames hold 0)
                rows.append((layer, frame, "attention_earlier", float(mass[..., :frame - frame % k].sum(-1).mean())))
                rows.append((layer, frame, "attention_same_frame", float(mass[..., frame].mean())))
    return pd.DataFrame(rows, columns=["layer", "frame", "metric", "value"])


Run = Recording  # the name analyses and notebooks used before the two types became one


def load_run(path: str | Path) -> Recording:
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
    return Recording(manifest, _Files(path), path)


# -- sweeps: the shards that probes/sweep.py writes, read as one run ---------------------------------------------


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
        if not isinstance(items, list) or not all(isinstance(i, dict) and int_list([i.get("clip"), i.get("seed")])
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


class MergedRun(Recording):
    """A sweep read as one run: similarities and attention averaged over its items (see probes/sweep.py)."""

    def __init__(self, path: Path, manifest: dict, items: list[Recording]) -> None:
        super().__init__(manifest, None, path)
        self._items = items

    @property
    def items(self) -> list[Recording]:
        """The sweep's runs, one per (clip, noise draw), in order of clip and seed."""
        return list(self._items)

    def _recorded(self):
        return self.items[0]._recorded()

    def _layers(self, name: str) -> list[int]:
        return self.items[0]._layers(name)

    def _tensor(self, name: str, layer: int, what: str = "") -> torch.Tensor:
        if name == FILES["features"] and what in ("", "tokens"):  # token-level features: one item's, for PCA
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

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        raise RunError(f"{self.path} is a sweep, saved as its shards; accepted: save one item (run.items[i].save(...))")


__all__ = ["Recording", "Run", "MergedRun", "load_run", "load_sweep", "is_sweep", "metrics_table", "memory_source"]
