"""`probe emergence`: measure the emergence study's training runs into cards, and rebuild the study from the cards;
`probe study`: train the study's runs.

    probe study train                                   # one worker per core; resumable, sitting by sitting
    probe emergence runs/study/reference-s0 runs/study/textured-s0 --out reports/emergence --force
    probe emergence --out reports/emergence --force     # the tables, figures and answer again, from the cards alone

Each run is probed over the val clips of the sprites scene (and, for the reference and the textured
condition, of the textured scene too), every layer, features and attention, 50 steps (`probes.record_sweep`, as
`probe run` would), its raw weights as its snapshots' (a short run's EMA lags its weights); its snapshots are probed the same way
on the scene it was trained on, and their sweeps deleted once measured. Cards of runs not named again are kept.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from probe_cli.checks import CLIP_MAX, UsageError, indices, output


def _snapshots(path: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in sorted((path / "snapshots").glob("step-*.safetensors"))
             if (m := re.fullmatch(r"step-(\d+)\.safetensors", p.name))]
    return sorted(found)


def _probe(model: str, clips: list[int], scene: str, out: Path) -> str:
    """Probe the checkpoint `model` over the val clips of `scene` into the sweep `out`, every layer, 50 steps, as
    `probe run --clip ... --layers all` does (the same noise seeds; `probes.record_sweep`); returns the call."""
    from probes.recorder import record_sweep
    from scd.zoo import load_model

    call = (f"probes.record_sweep(scd.load_model({model!r}), {str(out)!r}, clips={clips}, scene={scene!r}, "
            "layers='all', steps=50, force=True)")
    record_sweep(load_model(model), out, clips, scene=scene, layers="all", steps=50, force=True, info={"command": call})
    return call


def _study_run(run: str) -> tuple[str, str, int, Path]:
    """(card name, condition, seed, directory) of a finished run of the study plan; refused unless it is one."""
    import json

    from scd.training.study import CONDITIONS, off_plan, run_name, study_config
    from scd.training.train import trained_steps

    path = Path(run)
    if not ((path / "train.json").is_file() and (path / "train_state.safetensors").is_file()):
        raise UsageError(f"{run} is not a training directory written by probe train (train.json and "
                         "train_state.safetensors); accepted: a run of probe study train")
    settings = json.loads((path / "train.json").read_text())
    seed = settings.get("seed", 0)
    for condition in CONDITIONS:
        if not off_plan(settings, condition, seed):
            steps, done = study_config(condition, seed).steps, trained_steps(path)
            if done < steps:
                raise UsageError(f"{run} has trained {done} of its {steps} steps; accepted: a finished run (probe study "
                                 "train resumes it)")
            return run_name(condition, seed), condition, seed, path
    raise UsageError(f"{run} is not a run of the study plan (its settings match no condition of scd.training.study.CONDITIONS "
                     f"with its seed); accepted: a run of probe study train ({', '.join(CONDITIONS)})")


def _snapshot_steps(text: str, path: Path, offset: int) -> list[tuple[int, Path]]:
    """The snapshots to probe: all, none, or those at the given causal steps (the step minus the run's bidirectional
    pretraining, `offset`, so every condition is measured after the same causal training)."""
    found = _snapshots(path)
    if text == "all":
        return found
    if text == "none":
        return []
    wanted = set(indices(text, "--snapshot-steps", 0, 10**8))
    return [(step, p) for step, p in found if step - offset in wanted]


def cmd_emergence(args: argparse.Namespace) -> None:
    clips = indices(args.clip, "--clip", 0, CLIP_MAX)
    sources = [_study_run(run) for run in args.runs]
    names = [name for name, *_ in sources]
    if len(set(names)) != len(names):
        raise UsageError(f"two runs would write the same card ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                         "accepted: each condition and seed once")
    if args.snapshot_steps not in ("all", "none"):
        indices(args.snapshot_steps, "--snapshot-steps", 0, 10**8)
    out = Path(args.out)
    existing = out.is_dir() and any(out.iterdir())
    output(out, "emergence", args.force)
    from analyses.emergence import read_cards

    old = read_cards(out) if existing else []
    if not sources and not old:
        raise UsageError(f"{out} holds no cards to rebuild from; accepted: training runs to measure")

    import shutil

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from analyses.emergence import SCENE, TWO_BY_TWO, make_card, maps_of, measure, snapshot_point, training_record
    from analyses.emergence_figures import REGENERATE, write_emergence
    from probes.recording import load_run
    from scd.files import atomic_directory, signature
    from scd.training.study import CONDITIONS
    from scd.training.train import load_trained
    from scd.zoo import save_model

    cards = {c["name"]: c for c in old}
    maps = {c["name"]: dict(np.load(out / f"maps-{c['name']}.npz")) for c in old if (out / f"maps-{c['name']}.npz").exists()}
    probes = Path(args.probes)
    for name, condition, _seed, path in sources:
        record = training_record(path)
        trained = record["settings"].get("scene", SCENE)
        scenes = list(dict.fromkeys([SCENE, trained, *(("sprites", "textured") if condition in TWO_BY_TWO else ())]))
        model = str(probes / f"{name}-raw.safetensors")
        save_model(load_trained(path, "raw"), model)
        evaluations = {}
        for scene in scenes:
            sweep_dir = probes / f"{name}-{scene}"
            _probe(model, clips, scene, sweep_dir)
            sweep = load_run(sweep_dir)
            evaluations[scene] = measure(sweep, scene)
            if scene == SCENE:
                maps[name] = maps_of(sweep)
        curve = []
        offset = record["settings"].get("bidirectional_steps", 0)
        for step, weights in _snapshot_steps(args.snapshot_steps, path, offset):
            sweep_dir = probes / f"{name}-step-{step}"
            _probe(str(weights), clips, trained, sweep_dir)
            curve.append(snapshot_point(step, load_run(sweep_dir), trained, step - offset))
            shutil.rmtree(sweep_dir)  # measured: a snapshot's sweep is large and not needed again
        cards[name] = make_card(name, condition, CONDITIONS[condition][0], str(path), record, evaluations, curve)
        if not args.quiet:
            print(f"measured {name}")
    with atomic_directory(out, "emergence", args.force) as tmp:
        for name, card in cards.items():
            (tmp / f"card-{name}.json").write_text(json.dumps(card, indent=1) + "\n")
            if name in maps:
                np.savez_compressed(tmp / f"maps-{name}.npz", **maps[name])
        index = {**signature("emergence"), "cards": sorted(cards), "regenerate": REGENERATE}
        (tmp / "emergence.json").write_text(json.dumps(index, indent=1) + "\n")
        write_emergence(tmp, list(cards.values()), maps)
    print(f"wrote {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from scd.training.study import CONDITIONS, SEEDS, check_study_root, plan, run_name, run_state, study_config, train_study

    conditions = None
    if args.conditions is not None:
        conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or not conditions:
            raise UsageError(f"--conditions {args.conditions!r}: unknown {', '.join(unknown) or '(none given)'}; "
                             f"accepted: comma-separated names of {', '.join(CONDITIONS)}")
    seeds = tuple(args.seeds) if args.seeds else SEEDS
    # status reads the root: checked here; train_study checks a root it writes, first thing, before any work
    root = check_study_root(args.root, writing=False) if args.action == "status" else args.root
    # A run with a card in the study's directory is measured: done, even where its checkpoints are not on this machine.
    measured = frozenset()
    if args.skip_measured is not None:
        cards = Path(args.skip_measured)
        if not cards.is_dir():
            raise UsageError(f"--skip-measured {args.skip_measured} is not a directory; accepted: a study directory "
                             "written by probe emergence (its card-*.json)")
        measured = frozenset(p.name[len("card-"):-len(".json")] for p in cards.glob("card-*.json"))
    if args.action == "status":
        for condition, seed in plan(conditions, seeds):
            steps, name = study_config(condition, seed).steps, run_name(condition, seed)
            trained = f"{run_state(root, condition, seed)} of {steps} steps"
            print(f"{name}: " + (f"measured (card in {args.skip_measured})" if name in measured else trained))
        return
    finished = train_study(root, conditions, seeds, progress=not args.quiet, log=print if not args.quiet else lambda _: None,
                           measured=measured, threads=args.threads)
    print(f"trained {', '.join(finished) or 'nothing (every run done or held by another worker)'} under {root}")
