"""Probe sweeps over many clips or seeds, sharded over processes, GPUs or machines with `torchrun`.

    torchrun --standalone --nproc_per_node 2 -m probe_cli run --clip 0-3 --seeds 2 --out reports/runs/sweep
    probe report reports/runs/sweep                       # load_run merges the shards

Each rank probes every `world_size`-th (clip, seed) item and writes one shard, atomically:

    <sweep>/shard-00-of-02/shard.json          rank, world size, its items, "complete": true
    <sweep>/shard-00-of-02/clip0-seed0/        a complete run directory (store.py) per item
    ...

A shard needs nothing from the other ranks, so shards written on machines without a shared disk
can be copied into one directory afterwards. torch.distributed (gloo, on CPU or GPU) only makes
the ranks agree that the output directory is theirs before any of them writes. `load_run` (store.py) on a
sweep directory checks that every shard is there and complete, and returns a `MergedRun`: the same
interface as a `Run`, whose cross-step similarities and attention are means over the items (their
spread over items is in `metrics`, one row per item), and whose features and video are the first item's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from probes.recording import MergedRun, is_sweep, load_sweep
from probes.store import SHARD_FORMAT
from probes.sweep_plan import DRAW_STRIDE, item_name, noise_seed, shard_name, world
from scd.files import atomic_directory, discard, replace, temporary_sibling

__all__ = ["MergedRun", "is_sweep", "load_sweep", "noise_seed", "DRAW_STRIDE", "item_name", "shard_name", "world",
           "process_group", "broadcast", "barrier", "write_shard", "write_sweep"]


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


def broadcast(values: list, world_size: int) -> None:
    """Rank 0's `values` in place on every rank (the name of the sweep's temporary directory)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(values, src=0)


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def write_shard(out: Path, rank: int, world_size: int) -> Iterator[tuple[Path, list[dict]]]:
    """Yields (directory to write item runs into, list to append each item to); on success writes
    shard.json and renames the shard into place, replacing an older shard of the same name."""
    items: list[dict] = []
    with atomic_directory(out / shard_name(rank, world_size)) as tmp:
        yield tmp, items
        shard = {"format": SHARD_FORMAT, "rank": rank, "world_size": world_size, "items": items, "complete": True}
        (tmp / "shard.json").write_text(json.dumps(shard, indent=2) + "\n")


def write_sweep(out: Path, items: list[tuple[int, int]], record_item: Callable[[int, int, Path, bool], object],
                quiet: bool = False) -> bool:
    """Record every (clip, noise seed) item into a sweep directory `out`, this rank's share of them (torchrun's
    environment; one process: all): `record_item(clip, seed, run_path, quiet)` writes one item's run. The sweep is
    written into a hidden sibling and swapped in whole, so an older sweep stays until then. Returns whether this
    process is rank 0 (the one that reports)."""
    rank, world_size, _ = world()
    with process_group(world_size):
        if rank == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
        made = temporary_sibling(out) if rank == 0 else None
        name = [str(made.relative_to(out.parent)) if made is not None else None]
        broadcast(name, world_size)
        tmp = out.parent / name[0]
        target = tmp if tmp.is_dir() else out  # ranks on machines without the shared disk write in place
        try:
            with write_shard(target, rank, world_size) as (shard, written):
                for clip, seed in items[rank::world_size]:
                    record_item(clip, seed, shard / item_name(clip, seed), quiet or rank > 0)
                    written.append({"clip": clip, "seed": seed, "run": item_name(clip, seed)})
            barrier(world_size)
            if rank == 0:
                replace(tmp, out)
        finally:
            if made is not None and tmp.exists():
                discard(made)
    return rank == 0
