"""The paper's claims as functions of measured numbers, each with its threshold written down here.

Verdicts: "reproduced", "not reproduced", or "not measured" (what is missing is said). Thresholds
are fixed in this file, before and independent of any result; the report shows them next to the
measured values. Layer numbers are the paper's (a 30-block model): layer 15, the last 3 layers,
layers 28-29; for a model of another depth they are taken at the same relative depth. On SCD
(25 encoder + 10 decoder blocks) layer 15 lands in the encoder, which runs once per frame by
design: there are no steps to compare, and the claim is "not measured" with that reason. Its deep
layers are decoder layers, whose only past is the encoder output of the frame before.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyses.similarity import depth_curve
from analyses.sparsity import sparsity_table
from probes.store import Run

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"
SIMILARITY_THRESHOLD = 0.95   # claim 1: layer-15 mean off-diagonal cross-step cosine, over 50 steps
PAPER_STEPS = 50              # the paper's denoising steps per frame
DEEP_SHARE_MAX = 0.1          # claim 2: share of attention on earlier frames in layers 28-29 below this ...
DEEP_SHARE_RATIO = 1 / 3      # ... and below this fraction of the largest layer's share


_ONCE_PER_FRAME = ("layer {layer} is in SCD's encoder, which runs once per frame by design: no denoising steps "
                   "to compare")


@dataclass
class Claim:
    """One claim of the paper and its verdict on a run."""
    name: str        # short name
    statement: str   # what the paper says, in its words
    threshold: str   # the test applied, written before looking at any result
    measured: str    # the numbers the verdict rests on, or what is missing
    verdict: str     # reproduced / not reproduced / not measured


def paper_layers(depth: int) -> dict[str, list[int]]:
    """The paper's layers (15; the last 3; 28-29 of 30) mapped onto a model of `depth` blocks."""
    scale = lambda layer: round(layer * (depth - 1) / 29)  # noqa: E731
    return {"middle": [scale(15)], "last3": [depth - 3, depth - 2, depth - 1], "deep": sorted({scale(28), depth - 1})}


def middle_layer_similarity(run: Run) -> Claim:
    """Claim 1: the middle layer's features are nearly the same at every denoising step."""
    layer = paper_layers(run.depth)["middle"][0]
    name, statement = "cross-step similarity at layer 15", (
        "Early and middle layers are redundant across denoising steps: layer 15's step x step cosine "
        "similarity is near 1 everywhere (> 0.95).")
    threshold = f"mean off-diagonal per-token cosine at layer {layer} >= {SIMILARITY_THRESHOLD} over {PAPER_STEPS} steps"
    steps = len(run.manifest.get("steps", []))
    if run.role(layer) == "encoder":
        return Claim(name, statement, threshold, _ONCE_PER_FRAME.format(layer=layer), NOT_MEASURED)
    if layer not in run.feature_layers:
        return Claim(name, statement, threshold, f"layer {layer} was not probed (features)", NOT_MEASURED)
    if steps != PAPER_STEPS:
        return Claim(name, statement, threshold, f"the run has {steps} steps, the claim is about {PAPER_STEPS}", NOT_MEASURED)
    curve = depth_curve(run).set_index("layer")
    value = float(curve.loc[layer, "mean_off_diagonal"])
    verdict = REPRODUCED if value >= SIMILARITY_THRESHOLD else NOT_REPRODUCED
    return Claim(name, statement, threshold, f"{value:.3f} (min {curve.loc[layer, 'min']:.3f})", verdict)


def last_layers_less_similar(run: Run) -> Claim:
    """Claim 1, its other side: the last layers change more across steps than layer 15."""
    layers = paper_layers(run.depth)
    middle, last = layers["middle"][0], layers["last3"]
    name, statement = "last 3 layers less similar than layer 15", (
        "The redundancy is in early and middle layers: the last layers' features change across steps.")
    threshold = f"mean off-diagonal cosine of each of layers {last} < that of layer {middle}"
    if run.role(middle) == "encoder":
        return Claim(name, statement, threshold, _ONCE_PER_FRAME.format(layer=middle), NOT_MEASURED)
    missing = [layer for layer in [middle, *last] if layer not in run.feature_layers]
    if missing:
        return Claim(name, statement, threshold, f"layers {missing} were not probed (features)", NOT_MEASURED)
    curve = depth_curve(run).set_index("layer")["mean_off_diagonal"]
    verdict = REPRODUCED if all(curve[layer] < curve[middle] for layer in last) else NOT_REPRODUCED
    measured = f"layer {middle}: {curve[middle]:.3f}; " + ", ".join(f"layer {layer}: {curve[layer]:.3f}" for layer in last)
    return Claim(name, statement, threshold, measured, verdict)


def deep_layers_local(run: Run) -> Claim:
    """Claim 2: the deepest layers barely attend to earlier frames."""
    deep = paper_layers(run.depth)["deep"]
    name, statement = "layers 28-29 barely attend to past frames", (
        "Deep layers barely attend to past frames: layers 28 and 29 attend almost only within the frame.")
    threshold = (f"share of attention on earlier frames in each of layers {deep} < {DEEP_SHARE_MAX} and "
                 f"< {DEEP_SHARE_RATIO:.2f} x the largest share over the probed layers")
    probed = run.attention_layers
    missing = [layer for layer in deep if layer not in probed]
    if missing:
        return Claim(name, statement, threshold, f"layers {missing} were not probed (attention)", NOT_MEASURED)
    if not set(probed) - set(deep):
        return Claim(name, statement, threshold, "no layer other than the deep ones was probed to compare with",
                     NOT_MEASURED)
    share = sparsity_table(run).set_index("layer")["earlier_share"]
    largest = int(share.idxmax())
    ok = all(share[layer] < DEEP_SHARE_MAX and share[layer] < DEEP_SHARE_RATIO * share[largest] for layer in deep)
    measured = ", ".join(f"layer {layer}: {share[layer]:.3f}" for layer in deep) + \
        f"; largest: layer {largest}, {share[largest]:.3f}"
    if any(run.role(layer) == "decoder" for layer in deep):
        measured += " (SCD decoder: share on the encoder output of the frame before)"
    return Claim(name, statement, threshold, measured, REPRODUCED if ok else NOT_REPRODUCED)


REUSE_DRIFT_MIN = 30.0        # causal claim 1: PSNR (dB) of reuse-from-layer-15 frames vs unmodified, at least this
KNOCKOUT_DRIFT_MIN = 30.0     # causal claim 2: the same for knockout from layer 25


def _intervention_claim(summary, kind: str, layer: int, name: str, statement: str, threshold_db: float) -> Claim:
    threshold = f"PSNR of the generated frames vs the unmodified generation >= {threshold_db:g} dB (mean over clips)"
    row = summary[(summary.intervention == kind) & (summary.layer == layer)]
    if row.empty:
        swept = sorted(summary[summary.intervention == kind].layer.tolist())
        return Claim(name, statement, threshold, f"{kind} from layer {layer} was not measured (swept: {swept})",
                     NOT_MEASURED)
    row = row.iloc[0]
    measured = (f"{row.drift_psnr:.1f} dB (SSIM {row.drift_ssim:.3f}) over {int(row.clips)} clips; "
                f"speed-up {row.speedup:.2f}x")
    return Claim(name, statement, threshold, measured, REPRODUCED if row.drift_psnr >= threshold_db else NOT_REPRODUCED)


def reuse_costs_little(summary, depth: int) -> Claim:
    """Causal test of claim 1: computing layers 0..15 once per frame changes the frames little."""
    layer = paper_layers(depth)["middle"][0]
    return _intervention_claim(summary, "reuse", layer, f"reuse at layer {layer} costs little",
                               "Early and middle layers can be computed once per frame: reusing layer 15's features "
                               "across the denoising steps changes the generation little.", REUSE_DRIFT_MIN)


def knockout_costs_little(summary, depth: int) -> Claim:
    """Causal test of claim 2: cutting deep layers off past frames changes the frames little."""
    layer = round(25 * (depth - 1) / 29)
    return _intervention_claim(summary, "knockout", layer, f"knockout from layer {layer} costs little",
                               "Deep layers do not need past frames: letting layers 25.. attend only within the frame "
                               "changes the generation little.", KNOCKOUT_DRIFT_MIN)


CLAIMS = (middle_layer_similarity, last_layers_less_similar, deep_layers_local)
INTERVENTION_CLAIMS = (reuse_costs_little, knockout_costs_little)  # on a `probe intervene` summary


def evaluate(run: Run) -> list[Claim]:
    """Every claim's verdict on one run."""
    return [claim(run) for claim in CLAIMS]
