"""Every threshold of the claims, with its provenance: when it was set, in which commit, and whether a result of
its claim had been seen by then.

The history of `analyses/claims.py` (reconstructed from `git log -p`; each entry names the commit) shows
that most of the toolkit's first thresholds were set or changed after a result of their claim was on
record (in the README, a committed report or a commit message). Such a threshold may still be a good
criterion, but it is not pre-registered: the report says "post hoc" beside it, and where a threshold was
changed after a result, the verdict under the original criterion is shown beside the verdict under the
current one. Thresholds added by issue 26 were committed before the runs that test them (that commit
precedes the runs' in the history); where the issue itself had already reported the measure on the shipped
baseline, that is said too.
"""

from __future__ import annotations

from dataclasses import dataclass

BEFORE, AFTER = "before", "after"  # was a result of the claim on record when the threshold was set?


@dataclass(frozen=True)
class Threshold:
    """One number a verdict is tested against, and where it came from."""
    name: str                     # the constant in analyses/claims.py
    value: float                  # the current value
    test: str                     # what it bounds, in words
    commit: str                   # the commit that set the current value
    date: str                     # that commit's date (UTC)
    timing: str                   # BEFORE or AFTER a result of its claim was on record
    seen: str = ""                # what result was on record when it was set (AFTER), or why BEFORE holds
    original: float | None = None  # the value (or rule, see `original_rule`) first set, when it was changed since
    original_rule: str = ""       # the original criterion in words, when it was not the same test

    @property
    def post_hoc(self) -> bool:
        return self.timing == AFTER

    def short(self) -> str:
        """"post hoc (cf35735; changed from 0.95)" or "pre-registered (2a96325)": the claims tables' column."""
        changed = f"; changed from {self.original:g}" if self.original is not None else (
            "; changed from another rule" if self.original_rule else "")
        return f"{'post hoc' if self.post_hoc else 'pre-registered'} ({self.commit[:7]}{changed})"

    def provenance(self) -> str:
        """One line for the report's provenance column."""
        when = f"set {self.date[:10]} in {self.commit[:7]}"
        text = (f"post hoc: {when}, after {self.seen}" if self.post_hoc else
                f"pre-registered: {when}, before any result of its claim" + (f" ({self.seen})" if self.seen else ""))
        if self.original is not None or self.original_rule:
            text += "; changed from " + (self.original_rule or f"{self.original:g}")
        return text


_ISSUE26 = ("2a96325", "2026-12-01")  # the commit that added issue 26's thresholds, before its runs
_ISSUE27 = ("67b1955", "2026-12-02")  # the commit that added the emergence study's rules, before its runs
_STUDY_CANDIDATES = ("9dea926", "2026-12-02")  # the commit that set the combination's candidates (amended rule)
_ISSUE45 = ("a8c96e4", "2026-12-05")  # the commit that set the functional test's criterion after issue 45's review
_ISSUE47 = ("402fa29", "2026-12-05")  # the commit that set the rollout validation's margins, before its runs

THRESHOLDS: dict[str, Threshold] = {t.name: t for t in (
    Threshold("SIMILARITY_MIN", 0.90, "finding 1: cross-step cosine at layer 15 at least this",
              "cf35735", "2026-11-25", AFTER,
              "the 8-clip sweep's report (843f513) and the quick start's 0.958 (60b3d82); at 0.95 the headline "
              "interval [0.943, 0.960] is inconclusive", original=0.95,
              original_rule="0.95 (2b5fa41, 2026-11-24, itself set after the quick start's 0.958 on clip 0)"),
    Threshold("CONTROL_MARGIN", 0.20, "finding 1: cross-step cosine minus the two-frame control at least this",
              "cf35735", "2026-11-25", AFTER, "the reference report (843f513) with the control panel"),
    Threshold("INPUT_MARGIN", 0.10, "finding 1: cross-step cosine minus the blocks' input's at least this",
              "1b9bb5b", "2026-11-25", AFTER, "the input's cross-step cosine was recorded (4f0bd7a)",
              original_rule="1 - cosine at most 0.5 x the input's 1 - cosine (INPUT_CHANGE_RATIO, 4f0bd7a, "
                            "4 minutes earlier)"),
    Threshold("LAST_LAYERS_MARGIN", 0.02, "finding 1b: layer 15's cosine minus each last layer's at least this",
              "cf35735", "2026-11-25", AFTER, "the reference report (843f513): 0.921, 0.926, 0.950 vs 0.958",
              original=0.0, original_rule="each of the last 3 layers below layer 15 (2b5fa41: margin 0)"),
    Threshold("DEEP_RATIO_MAX", 0.10, "finding 2: per-key attention ratio, earlier / own frame, in layers 28-29 "
              "below this", "cf35735", "2026-11-25", AFTER, "the reference report (843f513) showed the deep layers' "
              "attention on earlier frames", original_rule="share of attention on earlier frames < 0.1 and < 1/3 "
              "of the largest layer's (DEEP_SHARE_MAX, DEEP_SHARE_RATIO, 2b5fa41)"),
    Threshold("DRIFT_MIN_DB", 30.0, "reuse / knockout: PSNR of the frames vs the unmodified ones at least this",
              "2680b70", "2026-11-24", BEFORE, "the first intervention results were committed in aece83c"),
    Threshold("QUALITY_LOSS_MAX_DB", 0.5, "surgeries: PSNR vs truth at most this much below the unmodified model's",
              "cf35735", "2026-11-25", BEFORE, "the surgeries' first results were committed in 691db9a and e778764"),
    Threshold("QUALITY_LOSS_MAX_SSIM", 0.02, "surgeries: SSIM vs truth at most this much below the unmodified "
              "model's", "e778764", "2026-11-25", AFTER, "the span skip's result its commit message cites (PSNR "
              "up, SSIM 0.71 to 0.34)", original_rule="no SSIM criterion (PSNR alone)"),
    Threshold("SKIP_CLAIM_STEPS", 5, "the span skip's claim: blocks run at the first k steps", "cf35735",
              "2026-11-25", BEFORE, "the skip was added in the same commit"),
    # -- issue 26: committed before the runs that test them ---------------------------------------------------
    Threshold("NOISE_MARGIN", 0.20, "finding 1: cross-step cosine minus the same frame's from other noise at least "
              "this (as the two-frame control)", *_ISSUE26, AFTER, "issue 26 reported the different-noise "
              "control on the shipped baseline (0.703)"),
    Threshold("CENTRED_INPUT_MARGIN", 0.10, "finding 1: centred cosine and CKA minus the input's at least this "
              "(as the raw input floor)", *_ISSUE26, AFTER, "issue 26 reported the centred layer-minus-input "
              "on the shipped baseline (0.081 [0.058, 0.103])"),
    Threshold("CENTRED_CONTROL_MARGIN", 0.20, "finding 1: centred cosine and CKA minus their two-frame and "
              "different-noise controls at least this", *_ISSUE26, AFTER, "issue 26 reported the centred cosine's "
              "contrast with its controls on the shipped baseline (found by issue 45's review; labelled "
              "pre-registered until then)"),
    Threshold("FUNCTIONAL_MARGIN", 0.10, "finding 1, functional: out-of-sample R^2 of the linear map from step-s "
              "features to the last step's, minus that of the best control predicting the same target (the blocks' "
              "input at step s, the other noise draw's step-s features, the previous frame's last step), at least "
              "this", *_ISSUE45, AFTER, "issue 45 reported the input floor's R^2 (-0.39 against the held-out clip's "
              "mean) and the layer's 0.81", original_rule="the same margin over the blocks' input alone, R^2 against "
              "the held-out clip's own mean (2a96325)"),
    Threshold("FUNCTIONAL_R2_MIN", 0.90, "finding 1, functional: the layer's out-of-sample R^2 from its step-s "
              "features (mean over the step grid) at least this: what it computes early holds what it computes last "
              "(as the cross-step cosine's 0.90)", *_ISSUE45, AFTER, "issue 45 reported the layer's R^2 0.81 on the "
              "shipped baseline"),
    Threshold("LIT_CUT_NATS", 7.0, "finding 2: a context cell is lit when its per-key ln p is at most this many "
              "nats below uniform (the paper's cut: 30% of -21..-9 is 7.0 below its uniform -10.4)", *_ISSUE26,
              AFTER, "issue 26 reported a paper-anchored cut giving 1.000 in every layer of the shipped baseline"),
    Threshold("EARLY_LIT_MIN", 0.50, "finding 2: lit share of layers 0-1 at least this (paper: ~100%)", *_ISSUE26,
              AFTER, "the same report", original_rule="the same bound on the share above 30% of one colour range "
              "over the probed layers (EARLY_SPARSITY_MIN, cf35735, set after the report 843f513)"),
    Threshold("DEEP_LIT_MAX", 0.10, "finding 2: lit share of layers 28-29 at most this (paper: 0.3%, 1%)",
              *_ISSUE26, AFTER, "the same report", original_rule="the same bound on the share above 30% of one "
              "colour range over the probed layers (DEEP_SPARSITY_MAX, cf35735)"),
    Threshold("RELIANCE_LOSS_MAX_DB", 0.5, "finding 2, causal: knocking a layer (or layers K..) off the past costs "
              "at most this PSNR vs truth", *_ISSUE26, AFTER, "the committed knockout table (17.39 vs 17.83 dB "
              "from layer 25)"),
    Threshold("RELIANCE_LOSS_MAX_SSIM", 0.02, "... and at most this SSIM vs truth", *_ISSUE26, AFTER,
              "the same table"),
    Threshold("QUALITY_FLOOR", 1.0, "quality claims: resolvable only when their threshold exceeds this many times "
              "the noise floor (the half-width of the 95% interval, over the same clips, of the unmodified model's "
              "quality difference between two noise draws); else inconclusive", "abbf605", "2026-12-01", AFTER,
              "issue 26 reported 17.21-17.80 dB across noise draws on the same 32 clips"),
    Threshold("REUSE_ADVANTAGE_MIN_DB", 0.0, "finding 1, causal: reusing blocks 0..15 between refreshes drifts less "
              "from the unmodified frames than reusing every block (PSNR vs unmodified, paired over clips) by more "
              "than this", "1945954", "2026-12-01", AFTER, "issue 26 reported that reusing every block drifts less "
              "than reusing up to 15 (36.3 vs 31.5 dB every 5 steps)"),
    Threshold("STUDY_COMPETENCE_DB", 1.0, "emergence study: a run counts as trained when its PSNR gain over "
              "copy-last (the mean over >= 16 val clips of the scene it was trained on) is at least this, with the gain's 95% "
              "interval over the clips above 0 and the SSIM gain's too; the study reads only trained runs",
              *_ISSUE27, BEFORE, "set by issue 27; a pilot of the reference's settings measured only quality, to size "
              "the study"),
    Threshold("STUDY_SEEDS_MIN", 3, "emergence study: training seeds per condition at least this; a condition's "
              "interval is a t interval over its seeds' run means", *_ISSUE27, BEFORE, "set by issue 27"),
    Threshold("STUDY_EFFECT_LEVEL", 0.95, "emergence study: a factor has an effect on a measure only when the Welch "
              "t interval at this level, over seeds, of its condition's mean minus the reference's excludes 0; "
              "else 'no detectable effect at this scale'", *_ISSUE27, BEFORE, "set by issue 27"),
    Threshold("STUDY_COMBINED_FACTORS", 2, "emergence study: the combination condition joins this many single "
              "factors: those with the lowest mean effect on the last layer's log per-key ratio (the most toward "
              "frame-local deep layers), whether or not their intervals exclude 0, among textured, clean-context-10 "
              "and bidirectional (scd.training.study.COMBINATION_CANDIDATES)", *_STUDY_CANDIDATES, AFTER,
              "the reference's 3 seeds, textured's and clean-context-10's 2 and bidirectional's 1 were on record; "
              "tokens-256 was left out of the candidates for its compute (~17 h a run on one thread, ~8 h on two: "
              "20 s / 10 s a step measured on a 2-core AMD EPYC; a session here holds 3 h), not for a result",
              original_rule="the same count among every single factor, tokens-256 included"),
    Threshold("PLAN_SSIM_MARGIN", 0.02, "caching plans, over the whole rollout: SSIM vs truth at most this below the "
              "unmodified model's (non-inferiority: the upper 95% bound of the paired loss over held-out clips, each "
              "clip's noise draws averaged)", *_ISSUE47, BEFORE, "no plan had been run over a rollout of 8 or more "
              "frames; only the 2-frame validation's SSIM was on record"),
    Threshold("PLAN_PSNR_MARGIN_DB", 0.5, "... and PSNR vs truth at most this below the unmodified model's", *_ISSUE47,
              BEFORE, "the same"),
    Threshold("PLAN_SPEED_TOLERANCE", 0.05, "a rule beats another at a matched share of skipped blocks when its drift "
              "PSNR from the unmodified video is higher (paired difference over clips, lower 95% bound > 0), its SSIM "
              "vs truth is not lower by more than PLAN_SSIM_MARGIN (lower bound), and its speed-up is at least (1 - "
              "this) x the other's (lower bound of the paired ratio)", *_ISSUE47, BEFORE, "the model-gated rule had "
              "not been run"),
    Threshold("RECOMPUTE_GAIN_MIN_SSIM", 0.02, "span skip: recomputing the span at the last m steps raises SSIM "
              "vs truth by at least this over the plain skip (the skip's loss sits in the last steps)", *_ISSUE26,
              AFTER, "issue 26 reported SSIM 0.38 / 0.51 / 0.76 / 0.78 for k = 5 / 25 / 40 / 48"),
)}


def threshold(name: str) -> float:
    """The current value of a threshold by its constant's name."""
    return THRESHOLDS[name].value
