"""Probe sweeps over many clips or seeds, sharded over processes, GPUs or machines with `torchrun`.

    torchrun --standalone --nproc_per_node 2 -m probes.cli run --clip 0-3 --seed 0,1 --out reports/runs/sweep
    probe report reports/runs/sweep                       # load_run merges the shards

Each rank probes every `world_size`-th (clip, seed) item and writes one shard, atomically:

    <sweep>/shard-00-of-02/shard.json          rank, world size, its items, "complete": true
    <sweep>/shard-00-of-02/clip0-seed0/        a complete run directory (store.py) per item
    ...

A shard needs nothing from the other ranks, so shards written on machines without a shared disk
can be copied into one directory afterwards. torch.distributed (gloo, on CPU or GPU) only makes
the ranks agree that the output directory is theirs before any of them writes. `load_run` on a
sweep directory checks that every shard is there and complete, and returns a `MergedRun`: the same
interface as a `Run`, whose cross-step similarities and attention are means over the items (their
spread over items is in `metrics`, one row per item), and whose features and video are the first item's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probes.store import Run, RunError, atomic_directory, load_run

SHARD_FORMAT = "scd-probes-shard/1"
SHARD = re.compile(r"shard-(\d+)-of-(\d+)")


def item_name(clip: int, seed: int) -> str:
    """The run directory of one sweep item inside its shard."""
    return f"clip{clip}-seed{seed}"


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:02d}-of-{world_size:02d}"


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def process_group(world_size: int) -> Iterator[None]:
    """A gloo process group for the ranks of a torchrun launch (nothing for a single process)."""
    import torch.distributed as dist

    if world_size == 1:
        yield
        return
    dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def is_sweep(path: str | Path) -> bool:
    """Does `path` hold shards (rather than a single run)?"""
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").exists() and any(
        SHARD.fullmatch(p.name) for p in path.iterdir() if p.is_dir())


@contextmanager
def write_shard(out: Path, rank: int, world_size: int) -> Iterator[tuple[Path, list[dict]]]:
    """Yields (directory to write item runs into, list to append each item to); on success writes
    shard.json and renames the shard into place, replacing an older shard of the same name."""
    items: list[dict] = []
    with atomic_directory(out / shard_name(rank, world_size)) as tmp:
        yield tmp, items
        shard = {"format": SHARD_FORMAT, "rank": rank, "world_size": world_size, "items": items, "complete": True}
        (tmp / "shard.json").write_text(json.dumps(shard, indent=2) + "\n")


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
        if shard.get("format") != SHARD_FORMAT or shard.get("complete") is not True:
            raise RunError(f"{directory} is not a complete shard of this toolkit")
        shards.setdefault(size, {})[rank] = (directory, shard)
    if len(shards) != 1:
        raise RunError(f"{path} mixes shards of sweeps over {sorted(shards)} ranks; keep the shards of one sweep")
    (size, by_rank), = shards.items()
    missing = sorted(set(range(size)) - set(by_rank))
    if missing:
        raise RunError(f"{path} lacks the shards of ranks {missing} (of {size}); run them or copy them in")
    items = sorted((item["clip"], item["seed"], directory / item["run"])
                   for directory, shard in by_rank.values() for item in shard["items"])
    if not items:
        raise RunError(f"{path} is a sweep with no items")
    runs = [load_run(run) for *_, run in items]
    manifest = {**runs[0].manifest, "sweep": {"world_size": size, "items": [{"clip": c, "seed": s} for c, s, _ in items]}}
    return MergedRun(path, manifest, runs)


@dataclass
class MergedRun(Run):
    """A sweep read as one run: similarities and attention averaged over its items (see the module docstring)."""
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

    @property
    def metrics(self) -> pd.DataFrame:
        """Every item's metrics, with its clip and seed."""
        return pd.concat([run.metrics.assign(clip=run.manifest.get("clip"), seed=run.manifest.get("seed"))
                          for run in self.items], ignore_index=True)

    def video(self) -> tuple[np.ndarray, np.ndarray]:
        return self.items[0].video()
