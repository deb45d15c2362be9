"""Functional redundancy across denoising steps: how well a layer's features at step s predict its last step's.

A high cross-step cosine says two steps' features point the same way; it does not say that what the
later steps add could be recovered from an early step. Here a linear map (ridge regression, features
standardised) is fitted from step-s features to the same frame's last-step features, pooled over the
tokens and frames of every clip but one, and scored on the held-out clip (leave one clip out, every draw
of that clip held out together): the out-of-sample R^2 (1 - residual / the sum of squares about the training clips'
mean, over every feature dimension; until issue 45 the held-out clip's own mean). Every predictor has the same target,
the layer's last step; the controls (issue 45): the blocks' input at step s, the same clip's other noise draw's step-s
features (what any draw of that clip computes), and the previous frame's last step (what the past already holds).
The input floor predicts the same target, the layer's last-step features, from the frame's
input to the blocks at step s (`hook_resid_pre` of the first stepwise block: the noisy frame, embedded): a layer
whose step-s features predict its last step no better than the step-s input does computes nothing step-invariant
beyond what the input carries. (Until issue 42 the floor predicted the input's own last step, another target whose
profile is the noise schedule; it is kept as `input_own_r2` for the claim's original verdict.) Needs full-mode runs
(every token's features, and the input's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.errors import AnalysisError
from probes.recording import Recording

RIDGE_ALPHA = 1.0  # on standardised features: a mild ridge, as 64 tokens x 4 frames x 7 clips fit 128 dimensions


def step_grid(steps: int, points: int = 5) -> list[int]:
    """The source steps tested: `points` evenly spaced steps from 0, all before the last step."""
    return sorted({round(k * (steps - 1) / points) for k in range(points)})


def _by_clip(items: list[Recording], features) -> tuple[list[np.ndarray], np.ndarray]:
    """Per item its features [F, S, N, D] (float64 numpy), and each item's clip (the group held out together)."""
    arrays, groups = [], []
    for item in items:
        x = features(item)
        if x is None:
            raise AnalysisError(f"{item.path} holds no input features (a stream-mode run, or a model without the "
                                "input hook): the functional test needs a full-mode run")
        array = x.double().numpy()
        if not np.isfinite(array).all():
            raise AnalysisError(f"{item.path} holds non-finite features (beyond float16's range, as stored): the "
                                "linear fit cannot be made")
        arrays.append(array)
        groups.append(item.manifest.get("clip"))
    return arrays, np.asarray(groups)


def held_out_pairs(sources: list[np.ndarray], targets: list[np.ndarray], groups: np.ndarray) -> dict:
    """Out-of-sample R^2 of a ridge map from each item's `sources` rows [n, D] to its `targets` rows [n, D'], one value
    per clip left out (every item of that clip held out together): 1 - the residual sum of squares over the sum of
    squares about the training items' mean (so a map no better than predicting the training mean scores 0 or below,
    whatever the held-out clip's own mean is)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = {}
    for clip in sorted(set(groups.tolist())):
        train = [i for i, g in enumerate(groups) if g != clip]
        test = [i for i, g in enumerate(groups) if g == clip]
        if not train:
            raise AnalysisError("the functional test needs at least two clips (leave one out)")
        model = make_pipeline(StandardScaler(), Ridge(alpha=RIDGE_ALPHA))
        trained = np.concatenate([targets[i] for i in train])
        model.fit(np.concatenate([sources[i] for i in train]), trained)
        truth = np.concatenate([targets[i] for i in test])
        residual = ((truth - model.predict(np.concatenate([sources[i] for i in test]))) ** 2).sum()
        total = ((truth - trained.mean(0)) ** 2).sum()
        scores[clip] = float(1 - residual / max(total, 1e-300))
    return scores


def held_out_r2(arrays: list[np.ndarray], groups: np.ndarray, source: int, target: int,
                targets: list[np.ndarray] | None = None) -> dict:
    """`held_out_pairs` from step `source` of `arrays` [F, S, N, D] to step `target` of `targets` (default: the
    same arrays), the tokens of every frame pooled."""
    x = [a[:, source].reshape(-1, a.shape[-1]) for a in arrays]
    y = [a[:, target].reshape(-1, a.shape[-1]) for a in (arrays if targets is None else targets)]
    return held_out_pairs(x, y, groups)


def _other_draws(items: list[Recording], groups: np.ndarray) -> list[int] | None:
    """For each item, another item of the same clip (another noise draw: the next one, cyclically); None unless every
    clip has two or more."""
    partners = []
    for i, clip in enumerate(groups):
        same = [j for j, g in enumerate(groups) if g == clip]
        if len(same) < 2:
            return None
        partners.append(same[(same.index(i) + 1) % len(same)])
    return partners


def functional_table(items: list[Recording], layer: int, points: int = 5) -> pd.DataFrame:
    """One row per (source step, clip): out-of-sample R^2 of the layer's last-step features (the one target of every
    predictor) from its own step-s features (`layer_r2`), and from three controls: the blocks' input at step s
    (`input_r2`), the same clip's other noise draw's step-s features (`redraw_r2`; NaN without two draws per clip),
    and the previous frame's last-step features (`previous_r2`, the same at every s; NaN with one frame); and the
    input's own last step from its step s (`input_own_r2`, the floor used before issue 42)."""
    if not items:
        raise AnalysisError("no runs given")
    steps = len(items[0].manifest["steps"])
    if steps < 2:
        raise AnalysisError("the functional test needs two or more steps")
    layer_arrays, groups = _by_clip(items, lambda item: item.features(layer))
    input_arrays, _ = _by_clip(items, lambda item: item.input_features())
    last = steps - 1
    partners = _other_draws(items, groups)
    previous = {}
    if layer_arrays[0].shape[0] >= 2:  # frame f's last step from frame f - 1's
        previous = held_out_pairs([a[:-1, last].reshape(-1, a.shape[-1]) for a in layer_arrays],
                                  [a[1:, last].reshape(-1, a.shape[-1]) for a in layer_arrays], groups)
    rows = []
    for source in step_grid(steps, points):
        ours = held_out_r2(layer_arrays, groups, source, last)
        floor = held_out_r2(input_arrays, groups, source, last, targets=layer_arrays)
        own = held_out_r2(input_arrays, groups, source, last)
        redraw = held_out_r2([layer_arrays[j] for j in partners], groups, source, last, targets=layer_arrays) \
            if partners is not None else {}
        for clip in ours:
            rows.append({"step": source, "clip": clip, "layer_r2": ours[clip], "input_r2": floor[clip],
                         "redraw_r2": redraw.get(clip, np.nan), "previous_r2": previous.get(clip, np.nan),
                         "difference": ours[clip] - floor[clip], "input_own_r2": own[clip],
                         "difference_own": ours[clip] - own[clip]})
    return pd.DataFrame(rows, columns=["step", "clip", "layer_r2", "input_r2", "redraw_r2", "previous_r2",
                                       "difference", "input_own_r2", "difference_own"])
