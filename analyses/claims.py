"""The paper's claims as functions of measured numbers, each tested against thresholds with their provenance.

Every claim is evaluated on each clip of a sweep (`probe run --clip 0-7 --seeds 2`; each clip has its own
noise, several draws of a clip are averaged into one unit) and given as the mean with a 95% t-interval
over the clips. Verdicts:
- "reproduced": every clause's interval lies on the paper's side of its threshold, every control cleared;
- "not reproduced" (in the paper's setting) or "not observed in this model" (in a model unlike the
  paper's: fewer parameters, tokens per frame or keys; the verdict names the model's scale): a clause's
  interval lies wholly on the other side;
- "inconclusive": an interval straddles its threshold, or there is one clip (no interval), or a
  control was not recorded, or the measure is below its noise floor;
- "not measured": what is missing is said.
Thresholds live in `analyses/thresholds.py` with the commit that set them and whether a result of the claim
was on record by then; the report shows that provenance beside each claim, and, for a criterion changed
after a result, the verdict under the original criterion too. Layer numbers are the paper's (a 30-block
model) mapped by relative depth onto the model at hand; the claim titles name the mapped layers. On SCD
(25 encoder + 10 decoder blocks) layer 15 lands in the encoder, which runs once per frame by design: there
are no steps to compare ("not measured"). Its deep layers are decoder layers, whose only past is the
encoder output of the frame before.

Finding 1's controls (each must be cleared): the two-frame control (the paper's: frame i vs i + 1, same
layer), the different-noise control (the same frame from another noise draw of the same clip, same layer:
a layer that merely follows what every draw shares is not "redundant across steps" in a way the two-frame
control can see), the blocks' input (the noise floor: a layer that passes on a still input shows nothing),
the same three with the token mean of each frame and step removed (centred cosine) and as linear CKA, and a
random-weight model of the same architecture (`probe run --control permuted`), evaluated by the same code
and shown beside the trained model, which must never come out "reproduced".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from analyses.errors import AnalysisError, takes_run
from analyses.intervals import CONFIDENCE, clip_groups, interval, over_clips
from analyses.redundancy import functional_table
from analyses.similarity import cross_frame_similarities, cross_noise_similarities, input_similarity, run_cosine
from analyses.sparsity import attention_measures, measures_by_head
from analyses.thresholds import THRESHOLDS, threshold
from probes.recording import Recording
from probes.reductions import off_diagonal
from scd.contract import paper_layer

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "not reproduced", "inconclusive", "not measured"
NOT_OBSERVED = "not observed in this model"  # "not reproduced" in a model unlike the paper's
PAPER_STEPS = 50              # the paper's denoising steps per frame
PAPER_PARAMETERS = 1.3e9      # the paper's model (Wan-1.3B causal): parameters ...
PAPER_TOKENS = 1560           # ... tokens per latent frame (480p) ...
PAPER_KEYS = 32760            # ... and keys of its longest context (21 latent frames)
SIMILARITY_MIN = threshold("SIMILARITY_MIN")
CONTROL_MARGIN = threshold("CONTROL_MARGIN")
NOISE_MARGIN = threshold("NOISE_MARGIN")
INPUT_MARGIN = threshold("INPUT_MARGIN")
CENTRED_INPUT_MARGIN = threshold("CENTRED_INPUT_MARGIN")
CENTRED_CONTROL_MARGIN = threshold("CENTRED_CONTROL_MARGIN")
FUNCTIONAL_MARGIN = threshold("FUNCTIONAL_MARGIN")
FUNCTIONAL_R2_MIN = threshold("FUNCTIONAL_R2_MIN")
LAST_LAYERS_MARGIN = threshold("LAST_LAYERS_MARGIN")
DEEP_RATIO_MAX = threshold("DEEP_RATIO_MAX")
LIT_CUT_NATS = threshold("LIT_CUT_NATS")
EARLY_LIT_MIN = threshold("EARLY_LIT_MIN")
DEEP_LIT_MAX = threshold("DEEP_LIT_MAX")


@dataclass
class Claim:
    """One claim of the paper and its verdict on a run (or a sweep of runs)."""
    name: str        # short name, with the mapped layers of the model at hand
    statement: str   # what the paper says, in its words
    threshold: str   # the test applied (the clauses and their thresholds)
    measured: str    # the numbers the verdict rests on (mean [95% interval] over n clips), or what is missing
    verdict: str     # reproduced / not reproduced (not observed in this model) / inconclusive / not measured
    values: dict = field(default_factory=dict)  # the numbers, for tables: name -> (mean, low, high, clips)
    provenance: str = ""  # each threshold's provenance (analyses/thresholds.py): pre-registered or post hoc
    original: str = ""    # the verdict under the original criterion, where one was changed after a result
    scale: str = ""       # the model and setting the verdict was observed in
    needs: str = ""       # what a run must hold for the claim to be measured (`Needs.text`)


@dataclass(frozen=True)
class Needs:
    """What a claim on a recording needs of a run: short of the first three it is not measured; with fewer clips its
    verdict can be no better than inconclusive. Checked before any number is computed (`_unmet`)."""
    capture: str                # "features" or "attention" of the claim's layers
    steps: int | None = None    # the denoising steps the claim is stated at (the paper's 50); None: any count
    frames: int = 1             # probed frames, at least (a two-frame control needs 2)
    clips: int = 2              # clips, each its own noise, for an interval (a leave-one-clip-out fit: 3)
    input_features: bool = False  # the blocks' input features (a full-mode run)

    def text(self) -> str:
        parts = [f"{self.capture} of its layers", f"{self.steps} denoising steps (the paper's)" if self.steps else
                 "any step count", f"{self.frames}+ probed frames" if self.frames > 1 else "1+ probed frame",
                 f"{self.clips}+ clips" + (" (the fit leaves one out)" if self.clips > 2 else " for an interval")]
        return ", ".join(parts + (["the blocks' input features (full mode)"] if self.input_features else []))


def _unmet(run: Recording, needs: Needs, layers: list[int]) -> tuple[list[str], list[str]]:
    """(what keeps the claim from being measured, what keeps it from a verdict better than inconclusive) on this run,
    every unmet requirement named with what the run has."""
    blocking, weak = [], []
    probed = run.feature_layers if needs.capture == "features" else run.attention_layers
    missing = [layer for layer in layers if layer not in probed]
    if missing:
        blocking.append(f"layers {missing} were not probed ({needs.capture})")
    steps = len(run.manifest.get("steps", []))
    if needs.steps is not None and steps != needs.steps:
        blocking.append(f"the run has {steps} steps, the claim is about {needs.steps}")
    frames = len(run.manifest.get("frames", []))
    if frames < needs.frames:
        blocking.append(f"{frames} frame(s) probed: the two-frame control needs {needs.frames}")
    clips = len(clip_groups(items_of(run)))
    if clips < needs.clips:
        (blocking if needs.clips > 2 else weak).append(
            f"{clips} clip(s): {'the fit leaves one clip out and needs' if needs.clips > 2 else 'an interval needs'} "
            f"{needs.clips} (probe run --clip 0-7)")
    return blocking, weak


def provenance(*names: str) -> str:
    """The provenance of the named thresholds, one short entry each, for a claim (the full account is
    `Threshold.provenance`, in the report's thresholds table)."""
    return "; ".join(f"{name} = {THRESHOLDS[name].value:g}: {THRESHOLDS[name].short()}" for name in names)


def paper_layers(depth: int) -> dict[str, list[int]]:
    """The paper's layers (15; the last 3; 28-29; 0-1; 0-10; the figure's 8) mapped onto a model of `depth` blocks."""
    scale = lambda layer: paper_layer(layer, depth)  # noqa: E731  (scd.contract's one mapping)
    return {"middle": [scale(15)], "last3": [max(0, depth - 3 + i) for i in range(3) if depth - 3 + i >= 0],
            "deep": sorted({scale(28), depth - 1}), "early": sorted({scale(0), scale(1)}),
            "early_span": sorted({scale(layer) for layer in range(11)}),
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
    if verdicts and all(v == REPRODUCED for v in verdicts):
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
def items_of(run: Recording) -> list[Recording]:
    """The runs of a sweep (one per clip and noise draw), or the run itself."""
    return run.items


@takes_run
def model_scale(run: Recording) -> dict:
    """The model and setting a verdict is observed in: parameters, tokens per frame, the most keys a query sees, steps."""
    m = run.manifest
    tokens = int(m.get("tokens_per_frame") or 0)
    return {"model": str(m.get("model", "?")), "parameters": m.get("parameters"), "tokens_per_frame": tokens,
            "keys": tokens * int(m.get("num_frames") or 0), "steps": len(m.get("steps", [])),
            "control": (m.get("control") or {}).get("kind")}


def _count(value) -> str:
    if not isinstance(value, (int, float)) or value <= 0:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(int(value))


@takes_run
def scale_text(run: Recording) -> str:
    """"this 9.0M-parameter model (64 tokens per frame, at most 512 keys, 50 steps)" and the paper's for contrast."""
    s = model_scale(run)
    return (f"{s['model']}: a {_count(s['parameters'])}-parameter model, {s['tokens_per_frame']:,} tokens per frame, "
            f"at most {s['keys']:,} keys, {s['steps']} steps (the paper: 1.3B, {PAPER_TOKENS:,} tokens per frame, "
            f"{PAPER_KEYS:,} keys, {PAPER_STEPS} steps)")


@takes_run
def in_paper_setting(run: Recording) -> bool:
    """Is the run's model at the paper's scale (parameters, tokens per frame and keys at least the paper's)?"""
    s = model_scale(run)
    return (s["parameters"] or 0) >= PAPER_PARAMETERS and s["tokens_per_frame"] >= PAPER_TOKENS and \
        s["keys"] >= PAPER_KEYS and s["control"] is None


def worded(verdict: str, run: Recording) -> str:
    """A verdict as the report says it: "not reproduced" only in the paper's setting, else "not observed in this model"."""
    return NOT_OBSERVED if verdict == NOT_REPRODUCED and not in_paper_setting(run) else verdict


def _per_item(run: Recording, measure: Callable[[Recording], float]) -> tuple[float, float, float, int]:
    return over_clips(items_of(run), measure)


_ONCE_PER_FRAME = ("{layer} in SCD's encoder, which runs once per frame by design: no denoising steps to compare")


def _layer_name(paper: str, layers: list[int], depth: int) -> str:
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    mapped = f"{layers[0]}-{layers[-1]}" if len(layers) >= 4 and contiguous else ", ".join(map(str, layers))
    return f"layer{'s' if len(layers) > 1 else ''} {mapped}" + ("" if depth == 30 else f" (the paper's {paper})")


def memoized(item: Recording, key: tuple, compute: Callable[[], object]) -> object:
    """A measure of one run, computed once per Recording object (the claims and the report ask for the same ones)."""
    cache = item.__dict__.setdefault("_claims_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def cross_step(item: Recording, layer: int, kind: str = "token") -> float:
    """Mean off-diagonal step x step similarity (`analyses.similarity.KINDS`) of one run at `layer`."""
    return memoized(item, ("step", layer, kind), lambda: float(off_diagonal(run_cosine(item, layer, kind)).mean()))


def input_step(item: Recording, kind: str = "token") -> float:
    """The same for the frame's input to the blocks (the noise floor)."""
    return memoized(item, ("input", kind), lambda: float(off_diagonal(input_similarity(item, kind)).mean()))


def two_frame(item: Recording, layer: int, kind: str = "token") -> float:
    """The two-frame control at `layer`: the same similarity between two different frames (`cross_frame_similarities`)."""
    every = memoized(item, ("frames", layer), lambda: {k: float(v.mean()) for k, v in
                                                     cross_frame_similarities(item, layer).items()})
    return every[kind]


def _noise_control(draws: list[Recording], layer: int, kind: str) -> float:
    every = memoized(draws[0], ("noise", layer, tuple(id(d) for d in draws)),
                  lambda: {k: float(v.mean()) for k, v in cross_noise_similarities(draws, layer).items()})
    return every[kind]


@dataclass
class _Finding1:
    """Finding 1's numbers at one layer, each (mean, low, high, clips) over clips."""
    values: dict
    parts: list  # (clause, verdict)
    missing: list  # what was not recorded (clauses then inconclusive)
    change_ratio: tuple | None = None  # (1 - cosine) / the input's, the input rule first committed (4f0bd7a)


def _finding1(run: Recording, layer: int) -> _Finding1:
    """Every clause of finding 1 at `layer`: raw, centred and CKA cross-step similarity against the two-frame
    control, the different-noise control and the blocks' input."""
    items = items_of(run)
    groups = list(clip_groups(items).values())
    values, parts, missing = {}, [], []
    kinds = [("token", "")] + [(k, f" ({k})") for k in ("centred", "cka")]
    raw = _per_item(run, lambda item: cross_step(item, layer))
    values["cross-step"] = raw
    parts.append((f"cross-step >= {SIMILARITY_MIN}", side(raw, SIMILARITY_MIN, True)))
    has_input = all(input_similarity(item) is not None for item in items)
    has_centred_input = has_input and all(input_similarity(item, "cka") is not None for item in items)
    draws = all(len(g) >= 2 for g in groups)
    full = all(item.manifest.get("mode") == "full" for item in items)
    for kind, suffix in kinds:
        within = raw if kind == "token" else _per_item(run, lambda item, kind=kind: cross_step(item, layer, kind))
        if kind != "token":
            values[f"cross-step{suffix}"] = within
        control_margin = CONTROL_MARGIN if kind == "token" else CENTRED_CONTROL_MARGIN
        noise_margin = NOISE_MARGIN if kind == "token" else CENTRED_CONTROL_MARGIN
        input_margin = INPUT_MARGIN if kind == "token" else CENTRED_INPUT_MARGIN
        if len(run.manifest.get("frames", [])) >= 2:
            control = _per_item(run, lambda item, kind=kind: two_frame(item, layer, kind))
            diff = _per_item(run, lambda item, kind=kind: cross_step(item, layer, kind) - two_frame(item, layer, kind))
            values[f"cross-frame control{suffix}"], values[f"minus two-frame control{suffix}"] = control, diff
            parts.append((f"minus two-frame control{suffix} >= {control_margin}", side(diff, control_margin, True)))
        if draws and full:
            noise = interval([_noise_control(g, layer, kind) for g in groups])
            diff = interval([sum(cross_step(item, layer, kind) for item in g) / len(g) - _noise_control(g, layer, kind)
                             for g in groups])
            values[f"different-noise control{suffix}"], values[f"minus different-noise control{suffix}"] = noise, diff
            parts.append((f"minus different-noise control{suffix} >= {noise_margin}", side(diff, noise_margin, True)))
        else:
            parts.append((f"different-noise control{suffix}", INCONCLUSIVE))
            if kind == "token":
                missing.append("the different-noise control (two noise draws per clip, full mode: probe run --seeds 2)")
        if (kind == "token" and has_input) or (kind != "token" and has_centred_input):
            floor = _per_item(run, lambda item, kind=kind: input_step(item, kind))
            diff = _per_item(run, lambda item, kind=kind: cross_step(item, layer, kind) - input_step(item, kind))
            values[f"input cross-step{suffix}"], values[f"layer minus input{suffix}"] = floor, diff
            parts.append((f"minus input{suffix} >= {input_margin}", side(diff, input_margin, True)))
        else:
            parts.append((f"input floor{suffix}", INCONCLUSIVE))
            if kind == "token" or not missing or "input" not in missing[-1]:
                missing.append(f"the input's cross-step similarity{suffix} (no hook_resid_pre, or a run made before)")
    ratio = _per_item(run, lambda item: (1 - cross_step(item, layer)) / max(1 - input_step(item), 1e-12)) \
        if has_input else None
    return _Finding1(values, parts, missing, ratio)


F1_NEEDS = Needs("features", steps=PAPER_STEPS, frames=2)  # finding 1: the paper's 50 x 50, a two-frame control
FUNCTIONAL_NEEDS = Needs("features", steps=PAPER_STEPS, frames=2, clips=3, input_features=True)
LAST_LAYERS_NEEDS = Needs("features")
ATTENTION_NEEDS = Needs("attention")


def _finding1_unmet(run: Recording, layers: list[int], needs: Needs = F1_NEEDS) -> tuple[list[str], list[str]]:
    """`_unmet` for finding 1, which also needs layers that run at every step and, for the fit, the input's features."""
    encoder = [layer for layer in layers if run.role(layer) == "encoder"]
    if encoder:
        return [_ONCE_PER_FRAME.format(layer=f"layer {encoder[0]} is" if len(encoder) == 1 else
                                       f"layers {', '.join(map(str, encoder))} are")], []
    blocking, weak = _unmet(run, needs, layers)
    if needs.input_features and any(item.input_features() is None for item in items_of(run)):
        blocking.append("the input's features were not recorded (a stream-mode run, or one made before): run in full mode")
    return blocking, weak


def _finding1_checks(run: Recording, layers: list[int], needs: Needs = F1_NEEDS) -> str | None:
    """Why finding 1 cannot be measured on this run (every unmet requirement, `Needs`), or None."""
    return "; ".join(_finding1_unmet(run, layers, needs)[0]) or None


FIRST_SIMILARITY_MIN = THRESHOLDS["SIMILARITY_MIN"].original  # 0.95, the first criterion of finding 1 (2b5fa41)
FIRST_INPUT_CHANGE_RATIO = 0.5  # the input rule first committed (4f0bd7a), replaced by INPUT_MARGIN 4 minutes later


def _original_verdicts(f1: _Finding1) -> dict[str, str]:
    """Finding 1's verdict under each changed criterion's first form, the other clauses as they are now: the first
    criterion alone (cross-step >= 0.95, 2b5fa41), SIMILARITY_MIN at 0.95, and the input rule first committed (the
    layer's 1 - cosine at most 0.5 x its input's, 4f0bd7a)."""
    first = side(f1.values["cross-step"], FIRST_SIMILARITY_MIN, True)
    swapped = lambda prefix, verdict: combine([verdict if c.startswith(prefix) else v for c, v in f1.parts])  # noqa: E731
    out = {"first criterion alone (cross-step >= 0.95, 2b5fa41)": first,
           "SIMILARITY_MIN at 0.95": swapped("cross-step >=", first)}
    if f1.change_ratio is not None:
        out["the first input rule (1 - cosine <= 0.5 x the input's, 4f0bd7a)"] = swapped(
            "minus input >=", side(f1.change_ratio, FIRST_INPUT_CHANGE_RATIO, False))
    return out


def _original_text(originals: dict[str, str], run: Recording) -> str:
    return "; ".join(f"{what}: {worded(verdict, run)}" for what, verdict in originals.items())


_F1_NAMES = ("SIMILARITY_MIN", "CONTROL_MARGIN", "NOISE_MARGIN", "INPUT_MARGIN", "CENTRED_CONTROL_MARGIN",
             "CENTRED_INPUT_MARGIN")
_F1_TEST = (f"at each layer, over its {PAPER_STEPS} steps: mean off-diagonal per-token cosine >= {SIMILARITY_MIN}; minus "
            f"the two-frame control (frame i vs i+1, same layer) >= {CONTROL_MARGIN}; minus the different-noise control "
            f"(the same frame from another noise draw) >= {NOISE_MARGIN}; minus the blocks' input's >= {INPUT_MARGIN}; "
            f"and the same with each frame and step's token mean removed (centred cosine) and as linear CKA: minus "
            f"each control >= {CENTRED_CONTROL_MARGIN}, minus the input's >= {CENTRED_INPUT_MARGIN}; each by its "
            f"{CONFIDENCE:.0%} interval over clips")


def _finding1_text(layer: int, f1: _Finding1, compact: bool = False) -> str:
    v = f1.values
    keys = (["cross-step", "minus two-frame control", "minus different-noise control", "layer minus input",
             "layer minus input (centred)", "minus different-noise control (centred)", "layer minus input (cka)"]
            if compact else list(v))
    text = ", ".join(f"{key} {shown(v[key])}" for key in keys if key in v)
    failed = [clause for clause, verdict in f1.parts if verdict != REPRODUCED]
    return f"layer {layer}: {text}" + (f" (not cleared: {'; '.join(failed)})" if failed else "")


@takes_run
def middle_layer_similarity(run: Recording) -> Claim:
    """Finding 1 at the middle layer: its features nearly the same at every step, against every control."""
    layer = paper_layers(run.depth)["middle"][0]
    name = f"cross-step similarity at {_layer_name('15', [layer], run.depth)}, against its controls"
    statement = ("Early and middle layers are redundant across denoising steps: layer 15's step x step cosine similarity "
                 "of one frame is near 1 (median 0.97), far above the same layer's similarity between two frames (0.58).")
    extra = dict(provenance=provenance(*_F1_NAMES), scale=scale_text(run), needs=F1_NEEDS.text())
    missing = _finding1_checks(run, [layer])
    if missing:
        return Claim(name, statement, _F1_TEST, missing, NOT_MEASURED, **extra)
    f1 = _finding1(run, layer)
    verdict = combine([v for _, v in f1.parts])
    measured = _finding1_text(layer, f1) + "; " + clips_note(f1.values["cross-step"][3])
    if f1.missing:
        measured += "; not recorded: " + "; ".join(f1.missing)
    return Claim(name, statement, _F1_TEST, measured, worded(verdict, run), f1.values,
                 original=_original_text(_original_verdicts(f1), run), **extra)


@takes_run
def early_layers_similarity(run: Recording) -> Claim:
    """Finding 1 as the paper states it, on the early layers (0-10): each must clear every clause."""
    layers = paper_layers(run.depth)["early_span"]
    name = f"cross-step similarity at {_layer_name('0-10', layers, run.depth)}, each against its controls"
    statement = "Early and middle layers are redundant across denoising steps (the paper's early layers: 0-10)."
    extra = dict(provenance=provenance(*_F1_NAMES), scale=scale_text(run), needs=F1_NEEDS.text())
    missing = _finding1_checks(run, layers)
    if missing:
        return Claim(name, statement, _F1_TEST + "; every layer", missing, NOT_MEASURED, **extra)
    per_layer = {layer: _finding1(run, layer) for layer in layers}
    verdict = combine([combine([v for _, v in f1.parts]) for f1 in per_layer.values()])
    measured = "; ".join(_finding1_text(layer, f1, compact=True) for layer, f1 in per_layer.items())
    values = {f"{key} {layer}": v for layer, f1 in per_layer.items() for key, v in f1.values.items()}
    by_layer = [_original_verdicts(f1) for f1 in per_layer.values()]
    originals = {what: combine([o[what] for o in by_layer]) for what in by_layer[0] if all(what in o for o in by_layer)}
    return Claim(name, statement, _F1_TEST + "; every layer", measured + "; " + clips_note(
        per_layer[layers[0]].values["cross-step"][3]), worded(verdict, run), values,
        original=_original_text(originals, run), **extra)


@takes_run
def functional_redundancy(run: Recording) -> Claim:
    """Finding 1, functionally: step-s features predict the layer's last step nearly whole (out of sample), and better
    than every control predicting the same target."""
    layer = paper_layers(run.depth)["middle"][0]
    name = f"step-s features at {_layer_name('15', [layer], run.depth)} predict the last step's (linear fit)"
    statement = ("What a middle layer computes at an early step already holds what it computes at the last one "
                 "(the redundancy SCD's encoder relies on).")
    test = (f"out-of-sample R^2 (leave one clip out, ridge on standardised features, against the training clips' mean) "
            f"of the layer's last-step features from its step-s features, averaged over steps s in an even grid of 5 "
            f"from 0: >= {FUNCTIONAL_R2_MIN}, and minus the R^2 of the best control predicting the same target (the "
            f"blocks' input at step s; the same clip's other noise draw's step-s features; the previous frame's last "
            f"step) >= {FUNCTIONAL_MARGIN}, each by its {CONFIDENCE:.0%} interval over clips")
    extra = dict(provenance=provenance("FUNCTIONAL_R2_MIN", "FUNCTIONAL_MARGIN"), scale=scale_text(run),
                 needs=FUNCTIONAL_NEEDS.text())
    missing = _finding1_checks(run, [layer], FUNCTIONAL_NEEDS)
    items = items_of(run)
    if missing:
        return Claim(name, statement, test, missing, NOT_MEASURED, **extra)
    try:
        table = functional_table(items, layer)
    except AnalysisError as e:
        return Claim(name, statement, test, f"{e}: inconclusive", INCONCLUSIVE, **extra)
    controls = ("input_r2", "redraw_r2", "previous_r2")
    per_clip = table.groupby("clip")[["layer_r2", *controls, "difference", "difference_own"]].mean()
    per_clip["best_control"] = per_clip[list(controls)].max(axis=1)  # NaN controls (not recorded) are skipped
    per_clip["over_best"] = per_clip.layer_r2 - per_clip.best_control
    ours, best, over, diff, own = (interval(per_clip[c].tolist()) for c in ("layer_r2", "best_control", "over_best",
                                                                            "difference", "difference_own"))
    shown_controls = {c: interval(per_clip[c].tolist()) if per_clip[c].notna().all() else None for c in controls}
    words = {"input_r2": "the input at step s", "redraw_r2": "the other noise draw", "previous_r2": "the previous frame"}
    by_step = table.groupby("step")[["layer_r2", "input_r2"]].mean()
    steps = ", ".join(f"s={s}: {r.layer_r2:.2f}" for s, r in by_step.iterrows())
    measured = (f"layer R^2 {shown(ours)} (by step: {steps}); controls, the same target: " + "; ".join(
        f"{words[c]} {shown(v)}" if v is not None else f"{words[c]} not recorded (two noise draws per clip, two "
        "frames)" for c, v in shown_controls.items()) + f"; layer minus the best control {shown(over)}; "
        f"{clips_note(over[3])}")
    parts = [side(ours, FUNCTIONAL_R2_MIN, True), side(over, FUNCTIONAL_MARGIN, True)]
    if any(v is None for v in shown_controls.values()):
        parts.append(INCONCLUSIVE)  # a control not recorded: not cleared
    original = (f"{worded(side(diff, FUNCTIONAL_MARGIN, True), run)} (before issue 45: the margin over the input alone, "
                f"{shown(diff)}); {worded(side(own, FUNCTIONAL_MARGIN, True), run)} (before issue 42: over the input's "
                f"own last step, {shown(own)}); both changed after their results, post hoc")
    return Claim(name, statement, test, measured, worded(combine(parts), run),
                 {"layer R2": ours, "best control R2": best, "R2 over the best control": over}, original=original,
                 **extra)


@takes_run
def last_layers_less_similar(run: Recording) -> Claim:
    """Claim 1, its other side: the last layers change more across steps than layer 15, which is itself redundant.

    The contrast is the paper's only where layer 15 is redundant (finding 1 at layer 15, every clause): a network
    that computes without learned structure (the rescaled control, `scd.zoo.rescaled_control`) met "each last layer
    less similar than layer 15" alone, so that clause by itself does not tell learned computation from computation.
    The condition on finding 1 was added after that result (issue 45): post hoc, the verdict without it beside."""
    layers = paper_layers(run.depth)
    middle, last = layers["middle"][0], layers["last3"]
    name = f"{_layer_name('last 3', last, run.depth)} less similar across steps than layer {middle}"
    statement = "The redundancy is in early and middle layers: the last layers' features change across steps."
    threshold = (f"cosine of layer {middle} minus that of each of layers {last} >= {LAST_LAYERS_MARGIN}, by its "
                 f"{CONFIDENCE:.0%} interval over clips; and finding 1 reproduced at layer {middle} (the redundancy "
                 f"the last layers are contrasted with; post hoc, issue 45: a network that computes without learned "
                 f"structure met the margin alone)")
    extra = dict(provenance=provenance("LAST_LAYERS_MARGIN", *_F1_NAMES), scale=scale_text(run),
                 needs=LAST_LAYERS_NEEDS.text() + f"; finding 1 at layer {middle}: {F1_NEEDS.text()}")
    if run.role(middle) == "encoder":
        return Claim(name, statement, threshold, _ONCE_PER_FRAME.format(layer=f"layer {middle} is"), NOT_MEASURED,
                     **extra)
    blocking, _ = _unmet(run, LAST_LAYERS_NEEDS, [middle, *last])
    if blocking:
        return Claim(name, statement, threshold, "; ".join(blocking), NOT_MEASURED, **extra)
    values = {layer: _per_item(run, lambda item, layer=layer: cross_step(item, middle) - cross_step(item, layer))
              for layer in last}
    margins = combine([side(v, LAST_LAYERS_MARGIN, True) for v in values.values()])
    original = combine([side(v, 1e-12, True) for v in values.values()])
    measured = f"layer {middle}: {shown(_per_item(run, lambda item: cross_step(item, middle)))}; " + "; ".join(
        f"minus layer {layer}: {shown(v)}" for layer, v in values.items())
    missing = _finding1_checks(run, [middle])
    if missing:
        redundant = INCONCLUSIVE  # the contrast needs the middle layer's verdict: unmeasured, it is not cleared
        measured += f"; finding 1 at layer {middle} not measured ({missing})"
    else:
        redundant = combine([v for _, v in _finding1(run, middle).parts])
        measured += f"; finding 1 at layer {middle}: {worded(redundant, run)}"
    measured += f"; {clips_note(len(clip_groups(items_of(run))))}"
    return Claim(name, statement, threshold, measured, worded(combine([margins, redundant]), run),
                 {f"{middle} - {layer}": v for layer, v in values.items()},
                 original=f"{worded(margins, run)} (before issue 45: the margins alone, without finding 1 at layer "
                          f"{middle}); {worded(original, run)} (first criterion: each last layer below layer "
                          f"{middle}, margin 0)", **extra)


def _attention_claim_checks(run: Recording, layers: list[int]) -> str | None:
    """Why an attention claim cannot be measured on this run, or None (bands: checked once, where the run was read)."""
    return "; ".join(_unmet(run, ATTENTION_NEEDS, layers)[0]) or None


def measures_of(item: Recording, steps: str = "all"):
    """`attention_measures(item, steps)`, once per Recording object."""
    return memoized(item, ("attention", steps), lambda: attention_measures(item, steps))


def heads_of(item: Recording):
    """`measures_by_head(item)`, once per Recording object."""
    return memoized(item, ("heads",), lambda: measures_by_head(item))


def _measure_tables(run: Recording) -> dict:
    """Per clip (draws averaged), each layer's attention measures: {clip: DataFrame indexed by layer}."""
    out = {}
    for clip, draws in clip_groups(items_of(run)).items():
        tables = [measures_of(item).set_index("layer") for item in draws]
        numeric = [t.drop(columns=["role"]) for t in tables]
        out[clip] = sum(numeric[1:], numeric[0]) / len(numeric)
    return out


@takes_run
def deep_layers_local(run: Recording) -> Claim:
    """Claim 2: the deepest layers barely attend to earlier frames, per key, whatever the context length."""
    deep = paper_layers(run.depth)["deep"]
    name = f"{_layer_name('28-29', deep, run.depth)} barely attend to past frames (per key)"
    statement = ("Deep layers barely attend to past frames: layers 28 and 29 focus almost exclusively on intra-frame "
                 "tokens.")
    threshold = (f"mean attention on one earlier-frame key / on one own-frame key < {DEEP_RATIO_MAX} in each of layers "
                 f"{deep} (all steps, heads averaged), by its {CONFIDENCE:.0%} interval over clips (uniform attention: 1)")
    extra = dict(provenance=provenance("DEEP_RATIO_MAX"), scale=scale_text(run), needs=ATTENTION_NEEDS.text())
    missing = _attention_claim_checks(run, deep)
    if missing:
        return Claim(name, statement, threshold, missing, NOT_MEASURED, **extra)
    tables = list(_measure_tables(run).values())
    values = {layer: interval([float(t.loc[layer, "per_key_ratio"]) for t in tables]) for layer in deep}
    share = {layer: interval([float(t.loc[layer, "earlier_share"]) for t in tables]) for layer in deep}
    nats = {layer: interval([float(t.loc[layer, "earlier_key_nats"]) for t in tables]) for layer in deep}
    verdict = combine([side(v, DEEP_RATIO_MAX, False) for v in values.values()])
    largest = max(float(t["earlier_share"].max()) for t in tables)
    original = combine([side(share[layer], 0.1, False) for layer in deep] +
                       [side(share[layer], largest / 3, False) for layer in deep])
    measured = "; ".join(f"layer {layer}: ratio {shown(v)}, per earlier key {shown(nats[layer], 2)} nats vs uniform, "
                         f"share on earlier frames {shown(share[layer])}" for layer, v in values.items())
    measured += f"; {clips_note(len(tables))}"
    if any(run.role(layer) == "decoder" for layer in deep):
        measured += " (SCD decoder: its past is the encoder output of the frame before)"
    return Claim(name, statement, threshold, measured, worded(verdict, run),
                 {f"ratio {layer}": v for layer, v in values.items()} | {f"nats {layer}": v for layer, v in nats.items()},
                 original=f"{worded(original, run)} (share on earlier frames < 0.1 and < 1/3 of the largest probed "
                          "layer's, 2b5fa41)", **extra)


@takes_run
def sparse_deep_attention(run: Recording) -> Claim:
    """Claim 2, as the figure shows it: early layers' maps are lit everywhere, deep layers' maps are dark, each layer
    measured on its own map against uniform attention (the paper's cut, 7 nats below uniform per key)."""
    layers = paper_layers(run.depth)
    early, deep = layers["early"], layers["deep"]
    name = f"{_layer_name('0-1', early, run.depth)} attend broadly, {_layer_name('28-29', deep, run.depth)} sparsely"
    statement = ("Early layers (0-10) attend broadly across frames; deep layers (20-29) exhibit sparse cross-frame "
                 "connections (lit context cells: layers 0-1 about 100%, 28: 0.3%, 29: 1%).")
    threshold = (f"share of the layer's pooled context cells (heads and steps averaged) whose per-key ln p is at most "
                 f"{LIT_CUT_NATS:g} nats below uniform's (the paper's cut): >= {EARLY_LIT_MIN} in layers {early} and "
                 f"<= {DEEP_LIT_MAX} in layers {deep}, by {CONFIDENCE:.0%} intervals over clips; per-head spread shown")
    extra = dict(provenance=provenance("LIT_CUT_NATS", "EARLY_LIT_MIN", "DEEP_LIT_MAX"), scale=scale_text(run),
                 needs=ATTENTION_NEEDS.text())
    missing = _attention_claim_checks(run, early + deep)
    if missing:
        return Claim(name, statement, threshold, missing, NOT_MEASURED, **extra)
    tables = list(_measure_tables(run).values())
    values = {layer: interval([float(t.loc[layer, "lit_share"]) for t in tables]) for layer in early + deep}
    per_item = [heads_of(item).set_index(["layer", "head"])["lit_share"] for item in items_of(run)]
    heads = sum(per_item[1:], per_item[0]) / len(per_item)  # each head's lit share, averaged over clips and draws
    spread = {layer: heads.loc[layer] for layer in early + deep}
    verdict = combine([side(values[layer], EARLY_LIT_MIN, True) for layer in early]
                      + [side(values[layer], DEEP_LIT_MAX + 1e-12, False) for layer in deep])
    measured = "; ".join(f"layer {layer}: {shown(v)} (heads {float(spread[layer].min()):.3f}-"
                         f"{float(spread[layer].max()):.3f})" for layer, v in values.items())
    # A lit share of 1 in every layer read is an observation (no layer's map is dark), not a separation of layers:
    # say how far the darkest cell came toward the cut, so that a reader sees the measure sat at its ceiling.
    if all(float(t.loc[layer, "lit_share"]) == 1.0 for t in tables for layer in early + deep):
        darkest = {layer: min(float(t.loc[layer, "darkest_nats"]) for t in tables) for layer in early + deep}
        measured += (f"; the lit share is 1 in every layer read, in every clip: no context cell falls {LIT_CUT_NATS:g} "
                     "nats below uniform (the darkest: " + ", ".join(f"layer {layer} {max(0.0, -v):.2f}" for layer, v in
                                                                   darkest.items()) +
                     " nats below), so this measure separates no layers in this run; the per-key ratio claim is the "
                     "graded one")
    # the first criterion (cf35735): the same bounds on the share above 30% of one colour range over the run's layers
    old = {layer: interval([float(t.loc[layer, "sparsity"]) for t in tables]) for layer in early + deep}
    original = combine([side(old[layer], EARLY_LIT_MIN, True) for layer in early]
                       + [side(old[layer], DEEP_LIT_MAX + 1e-12, False) for layer in deep])
    return Claim(name, statement, threshold, measured + f"; {clips_note(len(tables))}", worded(verdict, run),
                 {f"lit share {layer}": v for layer, v in values.items()},
                 original=f"{worded(original, run)} (share above 30% of one colour range over the probed layers, "
                          "cf35735: it depends on which layers were probed)", **extra)


CLAIMS = (middle_layer_similarity, early_layers_similarity, functional_redundancy, last_layers_less_similar,
          deep_layers_local, sparse_deep_attention)


@takes_run
def requirements(run: Recording) -> list[dict]:
    """Per claim, without computing it: its layers, what it needs (`Needs`), and what this run misses: `blocking`
    (it is not measured) and `weak` (its verdict can be no better than inconclusive). `probe show` prints these."""
    layers = paper_layers(run.depth)
    middle = layers["middle"]
    rows = [("finding 1, cross-step similarity", middle, F1_NEEDS), ("finding 1, early layers", layers["early_span"],
                                                                     F1_NEEDS),
            ("finding 1, functional (linear fit)", middle, FUNCTIONAL_NEEDS),
            ("finding 1, last layers less similar", middle + layers["last3"], LAST_LAYERS_NEEDS),
            ("finding 2, per-key ratio", layers["deep"], ATTENTION_NEEDS),
            ("finding 2, lit share", layers["early"] + layers["deep"], ATTENTION_NEEDS)]
    out = []
    for name, claim_layers, needs in rows:
        blocking, weak = _finding1_unmet(run, claim_layers, needs) if needs.steps is not None else \
            _unmet(run, needs, claim_layers)  # finding 1's own checks: stepwise layers, the input's features
        out.append({"claim": name, "layers": claim_layers, "needs": needs.text(), "blocking": blocking, "weak": weak})
    return out


@takes_run
def evaluate(run: Recording) -> list[Claim]:
    """Every claim's verdict on one run or sweep."""
    return [claim(run) for claim in CLAIMS]


# -- causal tests, on a `probe intervene` table (one row per setting and clip) ------------------------------------

DRIFT_MIN_DB = threshold("DRIFT_MIN_DB")
QUALITY_LOSS_MAX_DB = threshold("QUALITY_LOSS_MAX_DB")
QUALITY_LOSS_MAX_SSIM = threshold("QUALITY_LOSS_MAX_SSIM")
RELIANCE_LOSS_MAX_DB = threshold("RELIANCE_LOSS_MAX_DB")
RELIANCE_LOSS_MAX_SSIM = threshold("RELIANCE_LOSS_MAX_SSIM")
RECOMPUTE_GAIN_MIN_SSIM = threshold("RECOMPUTE_GAIN_MIN_SSIM")
REUSE_ADVANTAGE_MIN_DB = threshold("REUSE_ADVANTAGE_MIN_DB")
QUALITY_FLOOR = threshold("QUALITY_FLOOR")
SKIP_CLAIM_STEPS = int(threshold("SKIP_CLAIM_STEPS"))  # the span runs at the first 5 of 50 steps: "after the first steps"
RECOMPUTE_CLAIM_STEPS = 10    # the recompute claim: the span recomputed at the last 10 of 50 steps (issue 26, before runs)
_SCALE = ("the shipped 9.0M-parameter baseline family: 64 tokens per frame, at most 512 keys, 50 steps (the paper: 1.3B, "
          f"{PAPER_TOKENS:,} tokens per frame, {PAPER_KEYS:,} keys)")


def _rows(table, kind: str, layer: int | None = None, **match):
    rows = table[table.intervention == kind]
    if layer is not None:
        rows = rows[rows.layer == layer]
    for column, value in match.items():
        if column == "tail_steps" and value == 0:  # no recompute: 0, or -1 in tables made before it
            rows = rows[rows[column] <= 0] if column in rows else rows
        else:
            rows = rows[rows[column] == value]
    return rows


def _worded(verdict: str) -> str:
    """Intervention tables are of the built-in models, unlike the paper's setting."""
    return NOT_OBSERVED if verdict == NOT_REPRODUCED else verdict


def _drift_claim(table, kind: str, layer: int, name: str, statement: str) -> Claim:
    threshold = (f"PSNR of the generated frames vs the unmodified generation >= {DRIFT_MIN_DB:g} dB, by its "
                 f"{CONFIDENCE:.0%} interval over clips")
    extra = dict(provenance=provenance("DRIFT_MIN_DB"), scale=_SCALE)
    rows = _rows(table, kind, layer)
    if rows.empty:
        swept = sorted(set(_rows(table, kind).layer.tolist()))
        return Claim(name, statement, threshold, f"{kind} from layer {layer} was not measured (swept: {swept})",
                     NOT_MEASURED, **extra)
    drift = [min(float(v), 200.0) for v in rows.drift_psnr]  # identical frames: inf dB, counted as 200
    values = interval(drift)
    return Claim(name, statement, threshold, f"{shown(values, 1)} dB; {clips_note(values[3])}",
                 _worded(side(values, DRIFT_MIN_DB, True)), {"drift PSNR": values}, **extra)


def reuse_costs_little(table, depth: int) -> Claim:
    """Step-0 reuse (not the paper's surgery): blocks 0..15 computed once per frame, their output reused."""
    layer = paper_layers(depth)["middle"][0]
    refresh = table.attrs.get("refresh")
    which = f"reuse at layer {layer}, refreshed every {refresh} steps," if refresh else f"step-0 reuse at layer {layer}"
    return _drift_claim(table, "reuse", layer, f"{which} costs little",
                        "Early and middle layers can be computed once per frame (this toolkit's stronger test: layer "
                        "15's output from step 0 replaces the residual stream, current noisy frame included).")


def knockout_costs_little(table, depth: int) -> Claim:
    """Knockout without adaptation: deep layers cut off past frames, no fine-tune."""
    layer = paper_layer(25, depth)
    return _drift_claim(table, "knockout", layer, f"knockout from layer {layer} (no adaptation) costs little",
                        "Deep layers do not need past frames (this toolkit's test without the paper's fine-tune: "
                        "layers 25.. attend only within the frame).")


def reuse_tracks_redundancy(table, depth: int) -> Claim:
    """Finding 1, causally: if the middle layers' features are the step-invariant part, reusing them (blocks 0..15,
    refreshed every m steps) must cost less than reusing the whole network's output over the same steps."""
    middle, last = paper_layers(depth)["middle"][0], depth - 1
    refresh = table.attrs.get("refresh")
    name = (f"reusing blocks 0..{middle} drifts less than reusing every block ("
            + (f"both refreshed every {refresh} steps)" if refresh else "both from step 0)"))
    statement = ("Early and middle layers compute nearly the same features at every step, so they are the part that "
                 "can be computed once and reused.")
    threshold = (f"PSNR vs the unmodified frames of reuse from layer {middle} minus that of reuse from layer {last}, "
                 f"paired over clips, > {REUSE_ADVANTAGE_MIN_DB:g} dB by its {CONFIDENCE:.0%} interval")
    extra = dict(provenance=provenance("REUSE_ADVANTAGE_MIN_DB"), scale=_SCALE)
    ours, whole = _rows(table, "reuse", middle).set_index("clip"), _rows(table, "reuse", last).set_index("clip")
    if ours.empty or whole.empty:
        return Claim(name, statement, threshold, f"reuse from layers {middle} and {last} was not measured (probe "
                     f"intervene --reuse {middle},{last})", NOT_MEASURED, **extra)
    clips = [c for c in ours.index if c in whole.index]
    cap = lambda v: min(float(v), 200.0)  # noqa: E731  (identical frames: inf dB)
    diff = interval([cap(ours.drift_psnr[c]) - cap(whole.drift_psnr[c]) for c in clips])
    shared = "noise_seed" not in table or table[table.intervention == "none"].noise_seed.nunique() == 1
    measured = (f"reuse from {middle}: {ours.drift_psnr.mean():.1f} dB, from {last}: {whole.drift_psnr.mean():.1f} dB; "
                f"difference {shown(diff, 2)} dB; {clips_note(diff[3])}"
                + ("; every clip drawn with the same noise seed (a table made before issue 26)" if shared else ""))
    return Claim(name, statement, threshold, measured, _worded(side(diff, REUSE_ADVANTAGE_MIN_DB + 1e-12, True)),
                 {"reuse advantage dB": diff}, **extra)


def noise_floor(table) -> dict | None:
    """The noise floor of quality claims: per clip, the unmodified model's PSNR and SSIM vs truth from its first noise
    draw minus its second ("redraw"), as (mean, low, high, n) over clips, with the half-widths; None without redraws."""
    first, second = _rows(table, "none").set_index("clip"), _rows(table, "redraw").set_index("clip")
    clips = [c for c in first.index if c in second.index]
    if len(clips) < 2:
        return None
    psnr = interval([float(first.psnr[c] - second.psnr[c]) for c in clips])
    ssim = interval([float(first.ssim[c] - second.ssim[c]) for c in clips])
    return {"psnr": psnr, "ssim": ssim, "psnr_half": (psnr[2] - psnr[1]) / 2, "ssim_half": (ssim[2] - ssim[1]) / 2}


def _floor_parts(floor: dict | None, max_db: float, max_ssim: float) -> tuple[list[str], str]:
    """The floor clause: a loss threshold is resolvable only when it exceeds QUALITY_FLOOR x the floor's half-width."""
    if floor is None:
        return [INCONCLUSIVE], "noise floor not measured (no redraw rows: run probe intervene again)"
    ok = max_db > QUALITY_FLOOR * floor["psnr_half"] and max_ssim > QUALITY_FLOOR * floor["ssim_half"]
    text = (f"noise floor (two draws of the unmodified model): PSNR {shown(floor['psnr'], 2)} dB, half-width "
            f"{floor['psnr_half']:.2f}; SSIM {shown(floor['ssim'], 3)}, half-width {floor['ssim_half']:.3f}"
            + ("" if ok else ": the thresholds do not exceed it, so the loss cannot be resolved"))
    return [REPRODUCED if ok else INCONCLUSIVE], text


def quality_losses(rows, reference) -> tuple[tuple, tuple]:
    """(PSNR loss, SSIM loss) of `rows` against `reference` (indexed by clip), paired by clip, each over clips."""
    clips = rows["clip"].tolist()
    loss = interval([float(reference.psnr[c] - v) for c, v in zip(clips, rows.psnr, strict=True)])
    ssim = interval([float(reference.ssim[c] - v) for c, v in zip(clips, rows.ssim, strict=True)])
    return loss, ssim


def _quality_loss_claim(table, kind: str, name: str, statement: str, what: str, max_db: float = QUALITY_LOSS_MAX_DB,
                        max_ssim: float = QUALITY_LOSS_MAX_SSIM, names=("QUALITY_LOSS_MAX_DB", "QUALITY_LOSS_MAX_SSIM"),
                        control: str | None = None, original_psnr_only: bool = False, **match) -> Claim:
    threshold = (f"PSNR and SSIM vs the ground truth of the unmodified model minus those of {what}: < "
                 f"{max_db:g} dB and < {max_ssim:g}, each by its {CONFIDENCE:.0%} interval over the same clips"
                 + (f"; the same against {control} (the compute-matched control)" if control else "")
                 + f"; resolvable only above the noise floor (x{QUALITY_FLOOR:g})")
    extra = dict(provenance=provenance(*names, "QUALITY_FLOOR"), scale=_SCALE)
    rows, reference = _rows(table, kind, **match), _rows(table, "none").set_index("clip")
    if rows.empty:
        return Claim(name, statement, threshold, f"{what} was not measured", NOT_MEASURED, **extra)
    loss, ssim = quality_losses(rows, reference)
    speed = float(_rows(table, "none").seconds_per_frame.median() / rows.seconds_per_frame.median())
    measured = (f"PSNR loss {shown(loss, 2)} dB, SSIM loss {shown(ssim, 3)}, {clips_note(loss[3])} (unmodified "
                f"{reference.psnr.mean():.2f} dB / {reference.ssim.mean():.3f}, {what} {rows.psnr.mean():.2f} dB / "
                f"{rows.ssim.mean():.3f}); drift vs unmodified {rows.drift_psnr.mean():.1f} dB; speed-up {speed:.2f}x")
    parts = [side(loss, max_db, False), side(ssim, max_ssim, False)]
    values = {"PSNR loss dB": loss, "SSIM loss": ssim}
    if control:
        control_rows = _rows(table, control).set_index("clip")
        if control_rows.empty:
            parts.append(INCONCLUSIVE)
            measured += f"; the compute-matched control ({control}) was not measured (probe intervene --tuned-control)"
        else:
            closs, cssim = quality_losses(rows, control_rows)
            parts += [side(closs, max_db, False), side(cssim, max_ssim, False)]
            measured += (f"; against the control ({control}: {control_rows.psnr.mean():.2f} dB / "
                         f"{control_rows.ssim.mean():.3f}): PSNR loss {shown(closs, 2)} dB, SSIM loss {shown(cssim, 3)}")
            values |= {"PSNR loss vs control dB": closs, "SSIM loss vs control": cssim}
    floor_part, floor_text = _floor_parts(noise_floor(table), max_db, max_ssim)
    measured += "; " + floor_text
    verdict = _worded(combine(parts + floor_part))
    original = ""
    if original_psnr_only:
        original = f"{_worded(side(loss, max_db, False))} (PSNR alone, no control, no noise floor)"
    return Claim(name, statement, threshold, measured, verdict, values, original=original, **extra)


def span_skip_keeps_quality(table, depth: int) -> Claim:
    """The paper's middle-span skip: layers 8-22 run at the first steps only, quality kept."""
    first, last = paper_layers(depth)["span"]
    return _quality_loss_claim(
        table, "skip", f"skipping layers {first}-{last} after step {SKIP_CLAIM_STEPS} keeps quality",
        "Skipping layers 8-22 after the first denoising steps (reusing what they computed) keeps quality.",
        f"the skip of {first}-{last} after {SKIP_CLAIM_STEPS} steps", original_psnr_only=True, layer=first,
        span_end=last, keep_steps=SKIP_CLAIM_STEPS, tail_steps=0)


def skip_loss_in_last_steps(table, depth: int) -> Claim:
    """Where the skip's loss sits: recomputing the span at the last m steps recovers structure (SSIM)."""
    first, last = paper_layers(depth)["span"]
    m = RECOMPUTE_CLAIM_STEPS
    name = f"the skip's loss sits in the last steps: recomputing {first}-{last} at the last {m} recovers SSIM"
    statement = ("(Toolkit's question, not the paper's claim.) The paper skips the span after the first steps; if what "
                 "breaks quality is skipping the low-noise last steps, recomputing there recovers it.")
    threshold = (f"SSIM vs truth of the skip after {SKIP_CLAIM_STEPS} steps with the span recomputed at the last {m} "
                 f"minus that of the plain skip >= {RECOMPUTE_GAIN_MIN_SSIM:g}, by its {CONFIDENCE:.0%} interval over "
                 "the same clips")
    extra = dict(provenance=provenance("RECOMPUTE_GAIN_MIN_SSIM"), scale=_SCALE)
    plain = _rows(table, "skip", layer=first, span_end=last, keep_steps=SKIP_CLAIM_STEPS, tail_steps=0).set_index("clip")
    tail = _rows(table, "skip", layer=first, span_end=last, keep_steps=SKIP_CLAIM_STEPS, tail_steps=m).set_index("clip")
    if plain.empty or tail.empty:
        return Claim(name, statement, threshold, f"the skip after {SKIP_CLAIM_STEPS} steps with and without recomputing "
                     f"the last {m} was not measured (probe intervene --recompute-last {m})", NOT_MEASURED, **extra)
    clips = [c for c in plain.index if c in tail.index]
    gain = interval([float(tail.ssim[c] - plain.ssim[c]) for c in clips])
    reference = _rows(table, "none").set_index("clip")
    speed = float(reference.seconds_per_frame.median() / tail.seconds_per_frame.median())
    measured = (f"SSIM gain {shown(gain, 3)} (plain skip {plain.ssim.mean():.3f}, recomputed {tail.ssim.mean():.3f}, "
                f"unmodified {reference.ssim.mean():.3f}); PSNR {plain.psnr.mean():.2f} / {tail.psnr.mean():.2f} / "
                f"{reference.psnr.mean():.2f} dB; recomputed speed-up {speed:.2f}x; {clips_note(gain[3])}")
    return Claim(name, statement, threshold, measured, _worded(side(gain, RECOMPUTE_GAIN_MIN_SSIM, True)),
                 {"SSIM gain": gain}, **extra)


def diagonal_tune_recovers(table, depth: int) -> Claim:
    """The paper's frame-diagonal surgery: the last 5 layers attend within the frame, fine-tuned to recover, against
    the unmodified model and against the compute-matched fine-tune without the mask. A recovery needs a loss first:
    the untuned mask ("diagonal") must lose quality beyond the thresholds, by its interval (post hoc, issue 45);
    without a resolvable loss the fine-tune keeps quality but recovers nothing, and the claim is inconclusive."""
    claim = _quality_loss_claim(
        table, "diagonal-tuned", f"frame-diagonal layers {max(0, depth - 5)}-{depth - 1}, fine-tuned, recover quality",
        "A frame-diagonal mask in the last 5 layers recovers the baseline's quality after fine-tuning (5K steps).",
        "the fine-tuned frame-diagonal model", control="finetuned", original_psnr_only=True)
    if claim.verdict == NOT_MEASURED:
        return claim
    untuned = _rows(table, "diagonal")
    before = f"{claim.verdict} (without the loss-first clause)" + (f"; {claim.original}" if claim.original else "")
    capped = INCONCLUSIVE if claim.verdict == REPRODUCED else claim.verdict  # no recovery shown without a loss
    rule = ("; a recovery needs a loss first: the untuned mask's PSNR or SSIM loss beyond the thresholds by its "
            "interval (post hoc, issue 45, 2026-12-05: set after the untuned mask's cost was on record)")
    if untuned.empty:
        return replace(claim, threshold=claim.threshold + rule, verdict=capped, original=before,
                       measured=claim.measured + "; the untuned mask was not measured (probe intervene --diagonal): "
                       "whether there was a loss to recover is unknown")
    loss, ssim = quality_losses(untuned, _rows(table, "none").set_index("clip"))
    lost = REPRODUCED in (side(loss, QUALITY_LOSS_MAX_DB, True), side(ssim, QUALITY_LOSS_MAX_SSIM, True))
    shown_loss = f"; the untuned mask: PSNR loss {shown(loss, 2)} dB, SSIM loss {shown(ssim, 3)}"
    if lost:
        return replace(claim, threshold=claim.threshold + rule,
                       measured=claim.measured + shown_loss + " (a resolvable loss: there was quality to recover)")
    return replace(claim, threshold=claim.threshold + rule, verdict=capped, original=before,
                   measured=claim.measured + shown_loss + ": no resolvable loss, so nothing to recover (the fine-tuned "
                   "model keeps the quality the untuned mask already kept)")


def past_not_needed(table, depth: int) -> Claim:
    """Reliance on the past, causally: deep layers 25.. cut off the past (no adaptation) keep quality vs truth."""
    layer = paper_layer(25, depth)
    return _quality_loss_claim(
        table, "knockout", f"layers {layer}.. do not need the past: knockout keeps quality vs truth",
        "Deep layers barely attend to past frames (read causally: cutting them off the past costs little quality).",
        f"knockout from layer {layer}", RELIANCE_LOSS_MAX_DB, RELIANCE_LOSS_MAX_SSIM,
        ("RELIANCE_LOSS_MAX_DB", "RELIANCE_LOSS_MAX_SSIM"), layer=layer)


INTERVENTION_CLAIMS = (span_skip_keeps_quality, skip_loss_in_last_steps, diagonal_tune_recovers, reuse_costs_little,
                       reuse_tracks_redundancy, knockout_costs_little, past_not_needed)
