"""The paper's claims as functions of measured numbers, each with its threshold written down here.

Every claim is evaluated on each item of a sweep of clips (`probe run --clip 0-7`) and given as the
mean with a 95% t-interval over the clips. Verdicts:
- "reproduced": the interval lies on the paper's side of the threshold (a comparison of two numbers:
  their difference clears the margin, interval included);
- "not reproduced": the interval lies on the other side;
- "inconclusive": the interval straddles the threshold, or there is one clip (no interval), or the
  measure is below its noise floor (a flat attention map);
- "not measured": what is missing is said.
Thresholds are fixed in this file, before and independent of any result; the report shows them
next to the measured values. Layer numbers are the paper's (a 30-block model) mapped by relative
depth onto the model at hand; the claim titles name the mapped layers. On SCD (25 encoder + 10
decoder blocks) layer 15 lands in the encoder, which runs once per frame by design: there are no
steps to compare ("not measured"). Its deep layers are decoder layers, whose only past is the
encoder output of the frame before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from analyses.errors import takes_run
from analyses.intervals import CONFIDENCE, interval
from analyses.similarity import cross_frame_cosine
from analyses.sparsity import SPARSITY_FRACTION, SPARSITY_MIN_RANGE, attention_measures
from probes.reductions import off_diagonal
from probes.store import Run

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "not reproduced", "inconclusive", "not measured"
PAPER_STEPS = 50              # the paper's denoising steps per frame
SIMILARITY_MIN = 0.90         # claim 1: cross-step cosine at layer 15 at least this (paper: median 0.97, >= 0.90 to step 39)
CONTROL_MARGIN = 0.20         # ... and above the control (two frames, same layer) by this much (paper: 0.97 vs 0.58)
INPUT_MARGIN = 0.10           # ... and above its own input's cross-step cosine by this much: the noise floor
LAST_LAYERS_MARGIN = 0.02     # claim 1b: layer 15's cosine exceeds each of the last 3 layers' by this much
DEEP_RATIO_MAX = 0.10         # claim 2: per-key attention, earlier / own frame, in layers 28-29 below this
EARLY_SPARSITY_MIN = 0.50     # claim 2b: share of context cells lit in layers 0-1 at least this (paper: ~100%)
DEEP_SPARSITY_MAX = 0.10      # ... and in layers 28-29 at most this (paper: 0.3% and 1%)


@dataclass
class Claim:
    """One claim of the paper and its verdict on a run (or a sweep of runs)."""
    name: str        # short name, with the mapped layers of the model at hand
    statement: str   # what the paper says, in its words
    threshold: str   # the test applied, written before looking at any result
    measured: str    # the numbers the verdict rests on (mean [95% interval] over n clips), or what is missing
    verdict: str     # reproduced / not reproduced / inconclusive / not measured
    values: dict = field(default_factory=dict)  # the numbers, for tables: name -> (mean, low, high, clips)


def paper_layers(depth: int) -> dict[str, list[int]]:
    """The paper's layers (15; the last 3; 28-29; 0-1; the figure's 8) mapped onto a model of `depth` blocks."""
    scale = lambda layer: round(layer * (depth - 1) / 29)  # noqa: E731
    return {"middle": [scale(15)], "last3": [max(0, depth - 3 + i) for i in range(3) if depth - 3 + i >= 0],
            "deep": sorted({scale(28), depth - 1}), "early": sorted({scale(0), scale(1)}),
            "figure": sorted({scale(layer) for layer in (0, 1, 5, 10, 20, 25, 28, 29)}), "span": [scale(8), scale(22)]}


def side(values: tuple[float, float, float, int], threshold: float, above: bool) -> str:
    """Where an interval lies: REPRODUCED if wholly on the claimed side of `threshold` (above it, or below),
    NOT_REPRODUCED if wholly on the other, INCONCLUSIVE otherwise (or with one clip, or NaN)."""
    _, low, high, n = values
    if n < 2 or math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if (low >= threshold) if above else (high < threshold):
        return REPRODUCED
    if (high < threshold) if above else (low >= threshold):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """All parts reproduced: reproduced; any part clearly not: not reproduced; else inconclusive."""
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return NOT_REPRODUCED if NOT_REPRODUCED in verdicts else INCONCLUSIVE


def shown(values: tuple[float, float, float, int], digits: int = 3) -> str:
    mean, low, high, n = values
    if n < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def clips_note(n: int) -> str:
    """How many clips a verdict rests on; one gives no interval."""
    return f"{n} clips" if n > 1 else "1 clip: no interval, so inconclusive (sweep clips: probe run --clip 0-7)"


@takes_run
def items_of(run: Run) -> list[Run]:
    """The runs of a sweep (one per clip and seed), or the run itself."""
    return list(getattr(run, "items", None) or [run])


def _per_item(run: Run, measure: Callable[[Run], float]) -> tuple[float, float, float, int]:
    return interval([measure(item) for item in items_of(run)])


_ONCE_PER_FRAME = ("layer {layer} is in SCD's encoder, which runs once per frame by design: no denoising steps "
                   "to compare")


def _layer_name(paper: str, layers: list[int], depth: int) -> str:
    mapped = ", ".join(map(str, layers))
    return f"layer{'s' if len(layers) > 1 else ''} {mapped}" + ("" if depth == 30 else f" (the paper's {paper})")


def _cross_step(item: Run, layer: int) -> float:
    return float(off_diagonal(item.token_cosine(layer)).mean())


@takes_run
def middle_layer_similarity(run: Run) -> Claim:
    """Claim 1: the middle layer's features are nearly the same at every step, far more than two frames' features."""
    layer = paper_layers(run.depth)["middle"][0]
    name = f"cross-step similarity at {_layer_name('15', [layer], run.depth)}, against its control"
    statement = ("Early and middle layers are redundant across denoising steps: layer 15's step x step cosine similarity "
                 "of one frame is near 1 (median 0.97), far above the same layer's similarity between two frames (0.58).")
    threshold = (f"mean off-diagonal per-token cosine at layer {layer} >= {SIMILARITY_MIN}; minus the control (frame i "
                 f"vs i+1, same layer, every step pair) >= {CONTROL_MARGIN}; and minus the cosine of the frame's input to the "
                 f"blocks >= {INPUT_MARGIN} (a layer that merely passes on a still input shows no redundant "
                 f"computation); each by its {CONFIDENCE:.0%} interval over clips; {PAPER_STEPS} steps")
    steps = len(run.manifest.get("steps", []))
    if run.role(layer) == "encoder":
        return Claim(name, statement, threshold, _ONCE_PER_FRAME.format(layer=layer), NOT_MEASURED)
    if layer not in run.feature_layers:
        return Claim(name, statement, threshold, f"layer {layer} was not probed (features)", NOT_MEASURED)
    if steps != PAPER_STEPS:
        return Claim(name, statement, threshold, f"the run has {steps} steps, the claim is about {PAPER_STEPS}", NOT_MEASURED)
    if len(run.manifest["frames"]) < 2:
        return Claim(name, statement, threshold, "one frame was probed: the control needs two", NOT_MEASURED)
    within = _per_item(run, lambda item: _cross_step(item, layer))
    control = _per_item(run, lambda item: float(cross_frame_cosine(item, layer).mean()))
    margin = _per_item(run, lambda item: _cross_step(item, layer) - float(cross_frame_cosine(item, layer).mean()))
    parts = [side(within, SIMILARITY_MIN, True), side(margin, CONTROL_MARGIN, True)]
    measured = f"cross-step {shown(within)}; control (two frames) {shown(control)}; difference {shown(margin)}; "
    values = {"cross-step": within, "cross-frame control": control, "difference": margin}
    if all(item.input_cosine() is not None for item in items_of(run)):
        inputs = _per_item(run, lambda item: float(off_diagonal(item.input_cosine()).mean()))
        above = _per_item(run, lambda item: _cross_step(item, layer) - float(off_diagonal(item.input_cosine()).mean()))
        parts.append(side(above, INPUT_MARGIN, True))
        measured += f"the input's cross-step {shown(inputs)}; layer minus input {shown(above)}; "
        values |= {"input cross-step": inputs, "layer minus input": above}
    else:
        parts.append(INCONCLUSIVE)
        measured += "the input's cross-step similarity (the noise floor) was not recorded (no hook_resid_pre); "
    return Claim(name, statement, threshold, measured + clips_note(within[3]), combine(parts), values)


@takes_run
def last_layers_less_similar(run: Run) -> Claim:
    """Claim 1, its other side: the last layers change more across steps than layer 15."""
    layers = paper_layers(run.depth)
    middle, last = layers["middle"][0], layers["last3"]
    name = f"{_layer_name('last 3', last, run.depth)} less similar across steps than layer {middle}"
    statement = "The redundancy is in early and middle layers: the last layers' features change across steps."
    threshold = (f"cosine of layer {middle} minus that of each of layers {last} >= {LAST_LAYERS_MARGIN}, by its "
                 f"{CONFIDENCE:.0%} interval over clips")
    if run.role(middle) == "encoder":
        return Claim(name, statement, threshold, _ONCE_PER_FRAME.format(layer=middle), NOT_MEASURED)
    missing = [layer for layer in [middle, *last] if layer not in run.feature_layers]
    if missing:
        return Claim(name, statement, threshold, f"layers {missing} were not probed (features)", NOT_MEASURED)
    values = {layer: _per_item(run, lambda item, layer=layer: _cross_step(item, middle) - _cross_step(item, layer))
              for layer in last}
    verdict = combine([side(v, LAST_LAYERS_MARGIN, True) for v in values.values()])
    measured = f"layer {middle}: {shown(_per_item(run, lambda item: _cross_step(item, middle)))}; " + "; ".join(
        f"minus layer {layer}: {shown(v)}" for layer, v in values.items()) + f"; {clips_note(len(items_of(run)))}"
    return Claim(name, statement, threshold, measured, verdict, {f"{middle} - {layer}": v for layer, v in values.items()})


def _attention_claim_checks(run: Run, layers: list[int]) -> str | None:
    missing = [layer for layer in layers if layer not in run.attention_layers]
    if missing:
        return f"layers {missing} were not probed (attention)"
    if not run.bands:
        return "the run has no pooled attention maps (made before format 3): run it again"
    return None


@takes_run
def deep_layers_local(run: Run) -> Claim:
    """Claim 2: the deepest layers barely attend to earlier frames, per key, whatever the context length."""
    deep = paper_layers(run.depth)["deep"]
    name = f"{_layer_name('28-29', deep, run.depth)} barely attend to past frames (per key)"
    statement = ("Deep layers barely attend to past frames: layers 28 and 29 focus almost exclusively on intra-frame "
                 "tokens.")
    threshold = (f"mean attention on one earlier-frame key / on one own-frame key < {DEEP_RATIO_MAX} in each of layers "
                 f"{deep} (all steps, heads averaged), by its {CONFIDENCE:.0%} interval over clips (uniform attention: 1)")
    missing = _attention_claim_checks(run, deep)
    if missing:
        return Claim(name, statement, threshold, missing, NOT_MEASURED)
    tables = [attention_measures(item).set_index("layer") for item in items_of(run)]
    values = {layer: interval([float(t.loc[layer, "per_key_ratio"]) for t in tables]) for layer in deep}
    share = {layer: interval([float(t.loc[layer, "earlier_share"]) for t in tables]) for layer in deep}
    verdict = combine([side(v, DEEP_RATIO_MAX, False) for v in values.values()])
    measured = "; ".join(f"layer {layer}: ratio {shown(v)}, share on earlier frames {shown(share[layer])}"
                         for layer, v in values.items()) + f"; {clips_note(len(tables))}"
    if any(run.role(layer) == "decoder" for layer in deep):
        measured += " (SCD decoder: its past is the encoder output of the frame before)"
    return Claim(name, statement, threshold, measured, verdict, {f"ratio {layer}": v for layer, v in values.items()})


@takes_run
def sparse_deep_attention(run: Run) -> Claim:
    """Claim 2, as the figure shows it: early layers' maps are lit everywhere, deep layers' maps are dark."""
    layers = paper_layers(run.depth)
    early, deep = layers["early"], layers["deep"]
    name = f"{_layer_name('0-1', early, run.depth)} attend broadly, {_layer_name('28-29', deep, run.depth)} sparsely"
    statement = ("Early layers (0-10) attend broadly across frames; deep layers (20-29) exhibit sparse cross-frame "
                 "connections (lit context cells: layers 0-1 about 100%, 28: 0.3%, 29: 1%).")
    threshold = (f"share of the pooled map's context cells above {SPARSITY_FRACTION:.0%} of the colour range (ln p, one "
                 f"range for the run's layers, at least {SPARSITY_MIN_RANGE:.1f} nats wide): >= {EARLY_SPARSITY_MIN} in "
                 f"layers {early} and <= {DEEP_SPARSITY_MAX} in layers {deep}, by {CONFIDENCE:.0%} intervals over clips")
    missing = _attention_claim_checks(run, early + deep)
    if missing:
        return Claim(name, statement, threshold, missing, NOT_MEASURED)
    tables = [attention_measures(item).set_index("layer") for item in items_of(run)]
    if any(math.isnan(float(t.loc[layer, "sparsity"])) for t in tables for layer in early + deep):
        widest = max(float(t["range_nats"].max()) for t in tables)
        return Claim(name, statement, threshold, f"the maps are flat (colour range {widest:.2f} nats < "
                     f"{SPARSITY_MIN_RANGE:.2f}): below the noise floor", INCONCLUSIVE)
    values = {layer: interval([float(t.loc[layer, "sparsity"]) for t in tables]) for layer in early + deep}
    verdict = combine([side(values[layer], EARLY_SPARSITY_MIN, True) for layer in early]
                      + [side(values[layer], DEEP_SPARSITY_MAX + 1e-12, False) for layer in deep])
    measured = "; ".join(f"layer {layer}: {shown(v)}" for layer, v in values.items()) + f"; {clips_note(len(tables))}"
    return Claim(name, statement, threshold, measured, verdict, {f"sparsity {layer}": v for layer, v in values.items()})


CLAIMS = (middle_layer_similarity, last_layers_less_similar, deep_layers_local, sparse_deep_attention)


@takes_run
def evaluate(run: Run) -> list[Claim]:
    """Every claim's verdict on one run or sweep."""
    return [claim(run) for claim in CLAIMS]


# -- causal tests, on a `probe intervene` table (one row per setting and clip) ------------------------------------

DRIFT_MIN_DB = 30.0           # step-0 reuse / knockout: PSNR (dB) of the frames vs the unmodified ones, at least this
QUALITY_LOSS_MAX_DB = 0.5     # skip / diagonal-tuned: PSNR vs truth at most this much below the unmodified model's ...
QUALITY_LOSS_MAX_SSIM = 0.02  # ... and SSIM vs truth at most this much below (PSNR alone rewards a blurred frame)
SKIP_CLAIM_STEPS = 5          # the span runs at the first 5 of 50 steps: the paper's "after the first steps"


def _rows(table, kind: str, layer: int | None = None, **match):
    rows = table[table.intervention == kind]
    if layer is not None:
        rows = rows[rows.layer == layer]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    return rows


def _drift_claim(table, kind: str, layer: int, name: str, statement: str) -> Claim:
    threshold = (f"PSNR of the generated frames vs the unmodified generation >= {DRIFT_MIN_DB:g} dB, by its "
                 f"{CONFIDENCE:.0%} interval over clips")
    rows = _rows(table, kind, layer)
    if rows.empty:
        swept = sorted(set(_rows(table, kind).layer.tolist()))
        return Claim(name, statement, threshold, f"{kind} from layer {layer} was not measured (swept: {swept})",
                     NOT_MEASURED)
    drift = [min(float(v), 200.0) for v in rows.drift_psnr]  # identical frames: inf dB, counted as 200
    values = interval(drift)
    return Claim(name, statement, threshold, f"{shown(values, 1)} dB; {clips_note(values[3])}", side(values, DRIFT_MIN_DB, True),
                 {"drift PSNR": values})


def reuse_costs_little(table, depth: int) -> Claim:
    """Step-0 reuse (not the paper's surgery): blocks 0..15 computed once per frame, their output reused."""
    layer = paper_layers(depth)["middle"][0]
    return _drift_claim(table, "reuse", layer, f"step-0 reuse at layer {layer} costs little",
                        "Early and middle layers can be computed once per frame (this toolkit's stronger test: layer "
                        "15's output from step 0 replaces the residual stream, current noisy frame included).")


def knockout_costs_little(table, depth: int) -> Claim:
    """Knockout without adaptation: deep layers cut off past frames, no fine-tune."""
    layer = round(25 * (depth - 1) / 29)
    return _drift_claim(table, "knockout", layer, f"knockout from layer {layer} (no adaptation) costs little",
                        "Deep layers do not need past frames (this toolkit's test without the paper's fine-tune: "
                        "layers 25.. attend only within the frame).")


def _quality_loss_claim(table, kind: str, name: str, statement: str, what: str, **match) -> Claim:
    threshold = (f"PSNR and SSIM vs the ground truth of the unmodified model minus those of {what}: < "
                 f"{QUALITY_LOSS_MAX_DB:g} dB and < {QUALITY_LOSS_MAX_SSIM:g}, each by its {CONFIDENCE:.0%} interval "
                 "over the same clips")
    rows, reference = _rows(table, kind, **match), _rows(table, "none").set_index("clip")
    if rows.empty:
        return Claim(name, statement, threshold, f"{what} was not measured", NOT_MEASURED)
    clips = rows["clip"].tolist()
    loss = interval([float(reference.psnr[c] - v) for c, v in zip(clips, rows.psnr, strict=True)])
    ssim = interval([float(reference.ssim[c] - v) for c, v in zip(clips, rows.ssim, strict=True)])
    speed = float(_rows(table, "none").seconds_per_frame.median() / rows.seconds_per_frame.median())
    measured = (f"PSNR loss {shown(loss, 2)} dB, SSIM loss {shown(ssim, 3)}, {clips_note(loss[3])} (unmodified "
                f"{reference.psnr.mean():.2f} dB / {reference.ssim.mean():.3f}, {what} {rows.psnr.mean():.2f} dB / "
                f"{rows.ssim.mean():.3f}); drift vs unmodified {rows.drift_psnr.mean():.1f} dB; speed-up {speed:.2f}x")
    verdict = combine([side(loss, QUALITY_LOSS_MAX_DB, False), side(ssim, QUALITY_LOSS_MAX_SSIM, False)])
    return Claim(name, statement, threshold, measured, verdict, {"PSNR loss dB": loss, "SSIM loss": ssim})


def span_skip_keeps_quality(table, depth: int) -> Claim:
    """The paper's middle-span skip: layers 8-22 run at the first steps only, quality kept."""
    first, last = paper_layers(depth)["span"]
    return _quality_loss_claim(
        table, "skip", f"skipping layers {first}-{last} after step {SKIP_CLAIM_STEPS} keeps quality",
        "Skipping layers 8-22 after the first denoising steps (reusing what they computed) keeps quality.",
        f"the skip of {first}-{last} after {SKIP_CLAIM_STEPS} steps", layer=first, span_end=last,
        keep_steps=SKIP_CLAIM_STEPS)


def diagonal_tune_recovers(table, depth: int) -> Claim:
    """The paper's frame-diagonal surgery: the last 5 layers attend within the frame, fine-tuned to recover."""
    return _quality_loss_claim(
        table, "diagonal-tuned", f"frame-diagonal layers {max(0, depth - 5)}-{depth - 1}, fine-tuned, recover quality",
        "A frame-diagonal mask in the last 5 layers recovers the baseline's quality after fine-tuning (5K steps).",
        "the fine-tuned frame-diagonal model")


INTERVENTION_CLAIMS = (span_skip_keeps_quality, diagonal_tune_recovers, reuse_costs_little, knockout_costs_little)
