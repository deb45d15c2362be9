"""PCA images: a layer's features for one frame, projected on their top 3 principal components, as RGB.

Fitted jointly on all steps (scikit-learn PCA), so the colours mean the same at every step; each
component is scaled robustly (its 1st-99th percentile over all steps mapped to [0, 1]), once for
all steps. A component's sign is fixed so that its projections have positive skew, which makes
the images independent of the arbitrary sign (and of any rotation of the feature space).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA

from analyses.errors import AnalysisError


def pca_images(features: torch.Tensor, grid: tuple[int, int], token_index: torch.Tensor | None = None,
               components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Features [S, N', D] of one frame -> (images float [S, rows, cols, 3] in [0, 1], explained variance ratio).

    `token_index` [N'] places each token on the frame's row-major `grid` (stream runs keep a subsample);
    tokens not kept are shown mid-grey.
    """
    steps, tokens, width = features.shape
    rows, cols = grid
    if token_index is None:
        token_index = torch.arange(tokens)
    if len(token_index) != tokens or int(token_index.max()) >= rows * cols:
        raise AnalysisError(f"token_index must place {tokens} tokens on a {rows}x{cols} grid")
    x = features.double().reshape(steps * tokens, width).numpy()
    components = min(components, x.shape[0], x.shape[1])  # a stream run at scale may keep one token per step
    pca = PCA(n_components=components, svd_solver="full").fit(x)
    projected = pca.transform(x)  # [S * N', components]
    skew = (projected**3).mean(0)
    projected *= np.where(skew < 0, -1.0, 1.0)
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0, 1).reshape(steps, tokens, components)
    images = np.full((steps, rows * cols, 3), 0.5)
    images[:, token_index.numpy(), :components] = scaled
    return images.reshape(steps, rows, cols, 3), pca.explained_variance_ratio_
