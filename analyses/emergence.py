"""When does temporal sparsity emerge: variant cards, and the table, maps and curve made from them alone.

A variant is a training run of the baseline that differs from the study's reference run in one
setting (the `differs` of its card: training settings from train.json, architecture from the
model config). Its card holds how it was trained (command, steps, compute, wall time, hardware) and
what the probe measured on it over a sweep of val clips: quality against the truth and against
copying the last context frame, finding 1 at layer 15 with its control, and finding 2's measures
(per-key ratio, share on earlier frames, sparsity) by layer and step range, with the claims'
verdicts; a variant probed at its training snapshots adds the deep layers' ratio over training.

Everything here after `measure` reads cards only: the committed cards regenerate the committed
table, maps and curve, without the checkpoints (which stay out of git).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.claims import (
    DEEP_RATIO_MAX,
    NOT_OBSERVED,
    REPRODUCED,
    deep_layers_local,
    items_of,
    last_layers_less_similar,
    middle_layer_similarity,
    paper_layers,
    shown,
    sparse_deep_attention,
)
from analyses.errors import takes_run
from analyses.intervals import interval
from analyses.paper_figures import mean_map
from analyses.sparsity import STEP_RANGES, attention_measures
from probes.store import Run
from scd.flops import tokens_per_frame

CARD_FORMAT = 1
# Training settings a variant may change, in the words; any other difference is listed as it is.
FACTORS = {
    "bidirectional_steps": "bidirectional pretraining, then causal fine-tuning",
    "clean_context_ratio": "clean-context ratio",
    "scene": "training data (scene)",
    "steps": "training length",
    "width": "width",
    "heads": "heads",
    "patch_size": "tokens per frame (patch size)",
    "frame_size": "tokens per frame (frame size)",
    "bf16": "bfloat16 autocast (precision, not a factor of the study)",
}
# Settings that say where or how fast a run went, not what was trained.
NOT_SETTINGS = {"threads", "checkpoint_every", "snapshot_every", "dtype", "sha256", "init"}


class CardError(ValueError):
    """A card or run that cannot be read; the message names the file and what is wrong."""


def _as_list(values: tuple[float, float, float, int]) -> list:
    mean, low, high, n = values
    return [float(mean), None if math.isnan(low) else float(low), None if math.isnan(high) else float(high), int(n)]


def _quality(run: Run) -> dict:
    """PSNR / SSIM of each clip's generated frames against the truth and of copying the last context frame, from
    the videos the probe stored (uint8), so the numbers are of the very generations the measures are of."""
    from scd.evaluate import frame_quality

    context = min(run.manifest["frames"])
    rows = {"model_psnr": [], "model_ssim": [], "copy_psnr": [], "copy_ssim": []}
    for item in items_of(run):
        generated, truth = (torch.from_numpy(v).permute(0, 3, 1, 2).double() / 127.5 - 1 for v in item.video())
        probed = slice(context, context + len(item.manifest["frames"]))
        for who, frames in (("model", generated[probed]), ("copy", truth[context - 1:context].expand_as(truth[probed]))):
            psnr, ssim = frame_quality(frames, truth[probed])
            rows[f"{who}_psnr"].append(float(psnr.mean()))
            rows[f"{who}_ssim"].append(float(ssim.mean()))
    rows["gain_psnr"] = [m - c for m, c in zip(rows["model_psnr"], rows["copy_psnr"], strict=True)]
    return {name: _as_list(interval(values)) for name, values in rows.items()}


def observed(verdict: str) -> str:
    """A card's verdict as the claims word it now: these small variants are not the paper's setting, so a verdict
    recorded as "not reproduced" is "not observed in this model" (cards written before issue 26 keep their JSON)."""
    return NOT_OBSERVED if verdict == "not reproduced" else verdict


def _claim(claim) -> dict:
    return {"name": claim.name, "verdict": claim.verdict, "measured": claim.measured,
            "values": {str(k): _as_list(v) for k, v in claim.values.items()}}


@takes_run
def measure(run: Run) -> dict:
    """Every measure of a variant's card from a probed sweep (all layers, features and attention, 50 steps)."""
    items = items_of(run)
    tables = {steps: [attention_measures(item, steps).set_index("layer") for item in items] for steps in STEP_RANGES}
    finding2 = {}
    for layer in run.attention_layers:
        per_clip = {f"{measure}_{steps}": [float(t.loc[layer, measure]) for t in tables[steps]]
                    for steps in STEP_RANGES for measure in ("per_key_ratio", "earlier_share")}
        per_clip["sparsity_all"] = [float(t.loc[layer, "sparsity"]) for t in tables["all"]]
        finding2[str(layer)] = {name: _as_list(interval(values)) for name, values in per_clip.items()}
        finding2[str(layer)]["per_clip"] = per_clip  # in the order of probe.clips: variants on the same clips pair up
    return {
        "probe": {"clips": [item.manifest["clip"] for item in items], "seeds": [item.manifest["seed"] for item in items],
                  "steps": len(run.manifest["steps"]),
                  "frames": run.manifest["frames"], "split": items[0].manifest.get("split"),
                  "command": items[0].manifest.get("command")},
        "quality": _quality(run),
        "claims": {c.__name__: _claim(c(run)) for c in (middle_layer_similarity, last_layers_less_similar,
                                                         deep_layers_local, sparse_deep_attention)},
        "finding2": finding2,
    }


def snapshot_point(step: int, run: Run) -> dict:
    """One point of the curve: a snapshot's deep-layer per-key ratio by step range, finding 1 and its quality."""
    deep = paper_layers(run.depth)["deep"]
    items = items_of(run)
    ratios = {}
    for steps in STEP_RANGES:
        tables = [attention_measures(item, steps).set_index("layer") for item in items]
        for layer in deep:
            ratios[f"{layer}_{steps}"] = _as_list(interval([float(t.loc[layer, "per_key_ratio"]) for t in tables]))
    return {"step": step, "per_key_ratio": ratios, "quality": _quality(run),
            "finding1": _claim(middle_layer_similarity(run))}


@takes_run
def maps_of(run: Run) -> dict[str, np.ndarray]:
    """The figure's 8 layers' pooled maps (heads and steps averaged, clips too), float32, keyed "layer_N"."""
    layers = [layer for layer in paper_layers(run.depth)["figure"] if layer in run.attention_layers]
    return {f"layer_{layer}": mean_map(run, layer).float().numpy() for layer in layers}


def training_record(run_dir: str | Path) -> dict:
    """How a `probe train` run was trained: its settings, command, steps, compute, wall time and machines."""
    from scd.evaluate import training_command
    from scd.flops import training_flops

    run_dir = Path(run_dir)
    try:
        settings = json.loads((run_dir / "train.json").read_text())
        model = json.loads((run_dir / "config.json").read_text())
        log = pd.read_csv(run_dir / "loss.csv")
    except (OSError, ValueError) as e:
        raise CardError(f"{run_dir} is not a training directory written by probe train ({e})") from None
    sittings = (run_dir / "machines.txt").read_text().splitlines() if (run_dir / "machines.txt").exists() else []
    model = {k: v for k, v in model.items() if k not in ("dtype", "sha256")}
    per_step = training_flops(model, settings["frames"], settings["batch_size"])
    return {"command": training_command(run_dir), "settings": _settings({"settings": settings}), "model": model,
            "steps": int(log.step.max()),
            "pflop": len(log) * per_step / 1e15, "wall_hours": float(log.seconds.iloc[-1]) / 3600,
            "hardware": "; ".join(sorted({line.split(": ", 1)[1] for line in sittings})) or "(not recorded)",
            "final_loss": float(log.loss.tail(100).mean()), "weights": "raw (the optimised weights, not the EMA)"}


def shipped_record(name: str) -> dict:
    """The training record of a shipped checkpoint, read from its model card (its run directory is not shipped)."""
    from dataclasses import asdict

    from scd.flops import training_flops
    from scd.train_config import TrainConfig
    from scd.zoo import CHECKPOINT_DIR

    card = CHECKPOINT_DIR / f"{name}.md"
    try:
        text = card.read_text()
        model = {k: v for k, v in json.loads((CHECKPOINT_DIR / f"{name}.json").read_text()).items()
                 if k not in ("dtype", "sha256")}
        command = re.search(r"Command: `([^`]+)`", text).group(1)
        steps, batch = map(int, re.search(r"Iterations: (\d+) steps of batch (\d+)", text).groups())
        hours, hardware = re.search(r"wall time ([\d.]+) h on\s+(.+?)\.\n", text).groups()
        loss = float(re.search(r"Final loss \(mean of the last \d+ steps\): (\d+\.\d+)", text).group(1))
        chosen = re.search(r"Shipped: the \*\*(\w+)\*\* weights", text).group(1)
        ratio = float(re.search(r"clean-context ratio ([\d.]+)", text).group(1))
        bf16 = re.search(r"bfloat16 autocast: (\w+)", text).group(1) == "True"
    except (OSError, AttributeError, ValueError) as e:
        raise CardError(f"{card} is not a model card written by probe export ({e})") from None
    settings = asdict(TrainConfig(steps=steps, batch_size=batch, clean_context_ratio=ratio, bf16=bf16))
    per_step = training_flops(model, settings["frames"], batch)
    return {"command": command, "settings": settings, "model": model, "steps": steps, "pflop": steps * per_step / 1e15,
            "wall_hours": float(hours), "hardware": " ".join(hardware.split()), "final_loss": loss,
            "weights": f"{chosen} (shipped as `{name}`)"}


def _settings(record: dict) -> dict:
    """A record's training settings, with the defaults of settings added since it was trained."""
    from dataclasses import fields

    from scd.train_config import TrainConfig

    return {**{f.name: f.default for f in fields(TrainConfig)}, **record["settings"]}


def _model(record: dict) -> dict:
    """A record's model config, with the defaults of fields added since it was saved (baseline family)."""
    from dataclasses import asdict

    from scd.baseline import BaselineConfig

    defaults = asdict(BaselineConfig()) if record["model"].get("family") == "baseline" else {}
    return {**defaults, **record["model"]}


def differs(record: dict, reference: dict) -> dict[str, list]:
    """{setting: [reference's value, this run's]} for every training or model setting that differs."""
    out = {}
    for part in ("settings", "model"):
        mine, theirs = (_settings(r) if part == "settings" else _model(r) for r in (record, reference))
        for key in sorted(set(mine) | set(theirs)):
            if key not in NOT_SETTINGS and mine.get(key) != theirs.get(key):
                out[key] = [theirs.get(key), mine.get(key)]
    return out


def make_card(name: str, source: str, record: dict, measures: dict, over_training: list[dict] | None = None) -> dict:
    """A variant's card: where it came from, how it was trained, what was measured."""
    return {"format": CARD_FORMAT, "name": name, "source": source, "training": record, **measures,
            "over_training": over_training or []}


# -- from cards only ----------------------------------------------------------------------------------------------

def value_text(values: list | None, digits: int = 3) -> str:
    """A card's [mean, low, high, n] as claims.shown writes it ("-" where missing; no interval where JSON holds None)."""
    if not values:
        return "-"
    mean, low, high, n = values
    return shown((mean, math.nan if low is None else low, math.nan if high is None else high, n), digits)


def factor_text(card: dict, reference: dict) -> str:
    """What a card changes from the reference, in the issue's words."""
    if card["name"] == reference["name"]:
        return "(the reference)"
    changed = differs(card["training"], reference["training"])
    return "; ".join(f"{FACTORS.get(k, k)}: {a} -> {b}" for k, (a, b) in changed.items()) or "(same settings)"


def deep_layers(card: dict) -> list[str]:
    """The paper's layers 28-29 mapped onto the card's model."""
    return [str(layer) for layer in paper_layers(card["training"]["model"]["depth"])["deep"]]


def order(cards: list[dict], reference: str) -> list[dict]:
    """The reference first, then the others by name."""
    return sorted(cards, key=lambda c: (c["name"] != reference, c["name"]))


def emergence_table(cards: list[dict], reference: str) -> pd.DataFrame:
    """One row per variant: what differs, compute, quality, finding 1 with its control, finding 2 at the deep
    layers by step range, and the verdicts."""
    ref = next((c for c in cards if c["name"] == reference), None)
    if ref is None:
        raise CardError(f"no card named {reference!r} (the reference); accepted: one of {sorted(c['name'] for c in cards)}")
    rows = []
    for card in order(cards, reference):
        t, q, claims = card["training"], card["quality"], card["claims"]
        f1 = claims["middle_layer_similarity"]
        deep = deep_layers(card)
        row = {"variant": card["name"], "differs from the reference": factor_text(card, ref), "steps": t["steps"],
               "PFLOP": f"{t['pflop']:.2f}", "wall h": f"{t['wall_hours']:.2f}", "hardware": t["hardware"],
               "PSNR vs truth": value_text(q["model_psnr"], 2), "copy-last PSNR": value_text(q["copy_psnr"], 2),
               "SSIM vs truth": value_text(q["model_ssim"]), "copy-last SSIM": value_text(q["copy_ssim"]),
               "L15 cross-step": value_text(f1["values"].get("cross-step")),
               "L15 control (two frames)": value_text(f1["values"].get("cross-frame control")),
               "finding 1 (criteria before issue 26)": observed(f1["verdict"])}
        for layer in deep:
            for steps in STEP_RANGES:
                row[f"L{layer} ratio, {steps}"] = value_text(card["finding2"].get(str(layer), {}).get(f"per_key_ratio_{steps}"))
        row["finding 2 (per key)"] = observed(claims["deep_layers_local"]["verdict"])
        row["finding 2 (sparse maps, the old convention)"] = observed(claims["sparse_deep_attention"]["verdict"])
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def layer_table(cards: list[dict], reference: str) -> pd.DataFrame:
    """Per-key ratio (earlier / own frame) of every layer, per variant and step range: means over the clips."""
    rows = {}
    for card in order(cards, reference):
        for layer, measures in card["finding2"].items():
            for steps in STEP_RANGES:
                value = measures.get(f"per_key_ratio_{steps}")
                rows.setdefault(int(layer), {})[f"{card['name']}, {steps}"] = f"{value[0]:.3f}" if value else "-"
    table = pd.DataFrame.from_dict(rows, orient="index").sort_index().fillna("-")
    table.index.name = "layer"
    return table


def relative_ratio(card: dict, ref: dict, layer: str, steps: str = "all") -> list | None:
    """The variant's per-key ratio over the reference's at a layer: the geometric mean over clips with its 95%
    interval when both were probed on the same clips and seeds (paired), else the ratio of the means (n = 0)."""
    mine, theirs = card["finding2"].get(layer), ref["finding2"].get(layer)
    if not mine or not theirs:
        return None
    key = f"per_key_ratio_{steps}"
    paired = (card["probe"]["clips"], card["probe"].get("seeds")) == (ref["probe"]["clips"], ref["probe"].get("seeds"))
    a, b = mine.get("per_clip", {}).get(key), theirs.get("per_clip", {}).get(key)
    if paired and a and b and min(a + b) > 0:
        mean, low, high, n = interval([math.log(x / y) for x, y in zip(a, b, strict=True)])
        return [math.exp(mean), None if math.isnan(low) else math.exp(low), None if math.isnan(high) else math.exp(high), n]
    return [mine[key][0] / theirs[key][0], None, None, 0]


def _scale(card: dict) -> str:
    model = card["training"]["model"]
    tokens = tokens_per_frame(model)
    return (f"width {model['width']}, {model['depth']} blocks, {tokens} tokens per frame, "
            f"{card['training']['settings'].get('scene', 'sprites')} scene, {card['training']['steps']} steps")


def answer(cards: list[dict], reference: str) -> str:
    """The plain-words answer: did any variant show finding 2, and how far each factor moved the deep layers (the
    ratio to the reference's per-key ratio, paired over clips, with its 95% interval)."""
    ref = next(c for c in cards if c["name"] == reference)
    deep = deep_layers(ref)
    shown = [c for c in cards if c["claims"]["deep_layers_local"]["verdict"] == REPRODUCED]
    lines = []
    if shown:
        lines.append("Finding 2 reproduced (deep layers' per-key ratio below 0.1, its 95% interval over the clips) in: "
                     + ", ".join(f"`{c['name']}`" for c in shown) + ".")
    else:
        lines.append(f"No variant shows finding 2: in none do layers {', '.join(deep)} attend to an earlier-frame key "
                     "less than a tenth as much as to an own-frame key (95% intervals over the clips).")
    lines.append(f"The reference (`{ref['name']}`: {_scale(ref)}): per-key ratio "
                 + ", ".join(f"layer {layer} {value_text(ref['finding2'][layer]['per_key_ratio_all'])}" for layer in deep
                             if layer in ref["finding2"]) + ".")
    moved = []
    for card in order(cards, reference):
        if card is ref:
            continue
        parts = []
        for layer in deep:
            rel = relative_ratio(card, ref, layer)
            if rel is None:
                continue
            value = card["finding2"][layer]["per_key_ratio_all"]
            parts.append(f"layer {layer} {value[0]:.3f}, x{value_text(rel, 2)} the reference's")
            moved.append((card["name"], layer, rel))
        verdict = observed(card["claims"]["deep_layers_local"]["verdict"])
        lines.append(f"- `{card['name']}` ({factor_text(card, ref)}): {'; '.join(parts) or 'deep layers not probed'}; "
                     f"finding 2: {verdict}; PSNR {card['quality']['model_psnr'][0]:.2f} dB (copy-last "
                     f"{card['quality']['copy_psnr'][0]:.2f}).")
    if moved:
        name, layer, rel = min(moved, key=lambda m: m[2][0])
        clear = rel[2] is not None and rel[2] < 1
        lines.append(f"The largest move toward the paper: `{name}` at layer {layer}, x{value_text(rel, 2)} the reference's "
                     f"per-key ratio ({'below 1 by its 95% interval' if clear else 'its interval does not exclude no change'}"
                     f"; the paper's bound is a ratio below {DEEP_RATIO_MAX}).")
    if not moved:
        lines.append("Only the reference has been measured: no factor has been tried yet.")
    elif not shown:
        lower: dict[str, list[int]] = {}
        higher: dict[str, list[int]] = {}
        for name, layer, rel in moved:
            if rel[2] is not None and rel[2] < 1:
                lower.setdefault(name, []).append(layer)
            if rel[1] is not None and rel[1] > 1:
                higher.setdefault(name, []).append(layer)

        def named(which: dict[str, list[int]]) -> str:
            return ", ".join(f"`{n}` (layer {', '.join(map(str, layers))})" for n, layers in sorted(which.items()))

        if lower:
            mixed = sorted(set(lower) & set(higher))
            text = (f"What that suggests: {named(lower)} lowered the deep layers' reliance on the past (a paired interval "
                    "below 1) but nowhere near the paper's frame-local layers")
            if mixed:
                text += (f"; {', '.join(f'`{n}`' for n in mixed)} raised it at another deep layer, so the factor moves "
                         "the reliance between the deep layers more than it removes it; more of it, or factors together, "
                         "is what to try next.")
            else:
                text += "; the factor points the way, and more of it (or of it combined with others) is what to try next."
            lines.append(text)
        else:
            lines.append("What that suggests: none of the single factors tried moved the deep layers toward the frame "
                         "(no paired interval below 1); the paper's frame-local deep layers need what these variants "
                         "lack: a larger model, more tokens per frame, far longer training, or factors together.")
        if higher:
            lines.append(f"{named(higher)} made the deep layers look back more than the reference (a paired interval "
                         "above 1).")
    return "\n".join(lines)


def read_cards(directory: str | Path) -> list[dict]:
    """Every `card-*.json` in a directory, checked for the fields the table reads."""
    cards = []
    for path in sorted(Path(directory).glob("card-*.json")):
        try:
            card = json.loads(path.read_text())
            if card.get("format") != CARD_FORMAT or not {"name", "training", "quality", "claims", "finding2"} <= set(card):
                raise CardError(f"format {card.get('format')!r} or fields missing")
        except ValueError as e:
            raise CardError(f"{path} is not an emergence card of format {CARD_FORMAT} ({e})") from None
        cards.append(card)
    return cards


def load_study(directory: str | Path) -> dict:
    """A `probe emergence` directory: {"cards", "maps" (name -> layer -> array), "reference"}; a CardError if it is
    not one."""
    directory = Path(directory)
    try:
        reference = json.loads((directory / "emergence.json").read_text())["reference"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CardError(f"{directory} is not a directory written by probe emergence (emergence.json: {e})") from None
    cards = read_cards(directory)
    if not any(c["name"] == reference for c in cards):
        raise CardError(f"{directory} has no card of its reference {reference!r}; run probe emergence again")
    maps = {}
    for card in cards:
        path = directory / f"maps-{card['name']}.npz"
        if path.is_file():
            with np.load(path) as saved:
                maps[card["name"]] = {key: saved[key] for key in saved.files}
    return {"cards": cards, "maps": maps, "reference": reference}
