"""`probe emergence`: probe training runs of the baseline into variant cards, and rebuild the study from the cards.

    probe emergence runs/emergence/reference runs/emergence/bidirectional --snapshots --out reports/emergence --force
    probe emergence --out reports/emergence --force      # the table, maps and curve again, from the cards alone

Each run is probed over the val clips of the scene it was trained on, every layer, features and
attention, 50 steps (`probe run`); `--snapshots` also probes its snapshots/ at the layers the curve
and finding 1 read. The weights probed are the raw ones (a short run's EMA lags its weights), as
the snapshots are. Cards of runs not named again are kept.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from probe_cli.checks import CLIP_MAX, UsageError, indices, output


def snapshot_layers(depth: int) -> str:
    """The layers a snapshot is probed at: the figure's 8, layer 15 and the last 3 (the paper's, mapped to `depth`)."""
    from analyses.claims import paper_layers

    chosen = paper_layers(depth)
    return ",".join(map(str, sorted({*chosen["figure"], *chosen["middle"], *chosen["last3"]})))


def _source(run: str) -> tuple[str, Path | None]:
    """(card name, training directory or None for a shipped checkpoint); refused unless it is one of the two."""
    from scd.outputs import is_plain_name
    from scd.zoo import shipped_models

    path = Path(run)
    if (path / "train.json").is_file() and (path / "train_state.safetensors").is_file():
        name = path.resolve().name
        if not is_plain_name(name):
            raise UsageError(f"{run}: its directory name {name!r} cannot name a card; accepted: a plain name")
        return name, path
    if run in shipped_models():
        return run, None
    raise UsageError(f"{run} is neither a training directory written by probe train (train.json and "
                     f"train_state.safetensors) nor a shipped model; accepted: such a directory, or one of "
                     f"{', '.join(shipped_models())}")


def _snapshots(path: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in sorted((path / "snapshots").glob("step-*.safetensors"))
             if (m := re.fullmatch(r"step-(\d+)\.safetensors", p.name))]
    return sorted(found)


def _probe(model: str, clips: str, scene: str, layers: str, out: Path) -> str:
    """Probe `model` over the clips into `out` with `probe run`, in its own process (its manifest records that very
    command); returns the command."""
    import subprocess
    import sys

    argv = ["run", "--model", model, "--layers", layers, "--clip", clips, "--scene", scene, "--out", str(out),
            "--force", "--quiet"]
    if subprocess.run([sys.executable, "-m", "probe_cli", *argv], stdout=subprocess.DEVNULL).returncode != 0:
        raise UsageError(f"probing {model} failed (probe {' '.join(argv)}); see the line above")
    return "probe " + " ".join(argv)


def cmd_emergence(args: argparse.Namespace) -> None:
    clips = indices(args.clip, "--clip", 0, CLIP_MAX)
    sources = [_source(run) for run in args.runs]
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise UsageError(f"two runs would write the same card ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                         "accepted: runs whose directory names differ")
    if args.snapshots and not any(path is not None and _snapshots(path) for _, path in sources):
        raise UsageError("--snapshots: none of the runs kept snapshots; accepted: runs trained with --snapshot-every")
    out = Path(args.out)
    existing = out.is_dir() and any(out.iterdir())
    output(out, "emergence", args.force)
    from analyses.emergence import read_cards

    old = read_cards(out) if existing else []
    if args.reference is None:
        saved = out / "emergence.json"
        args.reference = json.loads(saved.read_text()).get("reference", "reference") if saved.is_file() else "reference"
    known = {c["name"] for c in old} | set(names)
    if args.reference not in known:
        raise UsageError(f"--reference {args.reference!r} has no card and is not among the runs; accepted: one of "
                         f"{', '.join(sorted(known)) or '(no cards yet: name the reference run first)'}")
    if not sources and not old:
        raise UsageError(f"{out} holds no cards to rebuild from; accepted: training runs to measure")

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from analyses.emergence import (
        make_card,
        maps_of,
        measure,
        shipped_record,
        snapshot_point,
        training_record,
    )
    from analyses.emergence_figures import REGENERATE, write_emergence
    from probes.store import load_run
    from scd.outputs import atomic_directory, signature
    from scd.train import load_trained
    from scd.zoo import save_model

    cards = {c["name"]: c for c in old}
    maps = {c["name"]: dict(np.load(out / f"maps-{c['name']}.npz")) for c in old if (out / f"maps-{c['name']}.npz").exists()}
    probes = Path(args.probes)
    clip_text = ",".join(map(str, clips))
    for name, path in sources:
        record = training_record(path) if path is not None else shipped_record(name)
        scene = record["settings"].get("scene", "sprites")
        model = name
        if path is not None:  # the raw weights, as the snapshots
            model = str(probes / f"{name}-raw.safetensors")
            save_model(load_trained(path, "raw"), model)
        command = _probe(model, clip_text, scene, "all", probes / name)
        sweep = load_run(probes / name)
        curve = []
        if args.snapshots and path is not None:
            for step, weights in _snapshots(path):
                _probe(str(weights), clip_text, scene, snapshot_layers(record["model"]["depth"]), probes / f"{name}-step-{step}")
                curve.append(snapshot_point(step, load_run(probes / f"{name}-step-{step}")))
        elif name in cards:
            curve = cards[name].get("over_training", [])  # measured before: kept unless measured again
        measures = measure(sweep)
        measures["probe"]["command"] = command
        cards[name] = make_card(name, str(path) if path is not None else f"shipped:{name}", record, measures, curve)
        maps[name] = maps_of(sweep)
        if not args.quiet:
            print(f"measured {name}: {cards[name]['claims']['deep_layers_local']['measured']}")
    with atomic_directory(out, "emergence", args.force) as tmp:
        for name, card in cards.items():
            (tmp / f"card-{name}.json").write_text(json.dumps(card, indent=1) + "\n")
            if name in maps:
                np.savez_compressed(tmp / f"maps-{name}.npz", **maps[name])
        index = {**signature("emergence"), "reference": args.reference, "cards": sorted(cards), "regenerate": REGENERATE}
        (tmp / "emergence.json").write_text(json.dumps(index, indent=1) + "\n")
        write_emergence(tmp, list(cards.values()), maps, args.reference)
    print(f"wrote {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from scd.study import CONDITIONS, SEEDS, plan, run_name, run_state, study_config, train_study

    conditions = None
    if args.conditions is not None:
        conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or not conditions:
            raise UsageError(f"--conditions {args.conditions!r}: unknown {', '.join(unknown) or '(none given)'}; "
                             f"accepted: comma-separated names of {', '.join(CONDITIONS)}")
    seeds = tuple(args.seeds) if args.seeds else SEEDS
    root = Path(args.root)
    if args.action == "status":
        for condition, seed in plan(conditions, seeds):
            steps = study_config(condition, seed).steps
            print(f"{run_name(condition, seed)}: {run_state(root, condition, seed)} of {steps} steps")
        return
    finished = train_study(root, conditions, seeds, progress=not args.quiet, log=print if not args.quiet else lambda _: None)
    print(f"trained {', '.join(finished) or 'nothing (every run done or held by another worker)'} under {root}")
