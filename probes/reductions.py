"""Cross-step reductions of one frame's features, computed as the denoising steps arrive.

The paper's first finding is about the step x step cosine similarity of a layer's features while
one frame is denoised. `StepGram` builds that matrix row by row: at step s it takes the inner
products of the new features with those of every earlier step of the same frame (computed when the
frame is done, off the hot path), then the frame's buffer is dropped. Two similarities come out of
the same inner products:

- per-token cosine, averaged over tokens: mean_n cos(x_s[n], x_t[n]) (the default in analyses);
- flattened cosine: cos(vec x_s, vec x_t), from the Gram matrix of the flattened features.

An exact row needs every earlier step of the frame, so memory holds one frame's steps at a time
(per layer), never all frames; what is kept afterwards is S x S per frame.
"""

from __future__ import annotations

import torch

SETTLE_BUDGET = 2**24  # float64 elements of one chunk of tokens' features in `StepGram` (128 MiB)


class StepGram:
    """Step x step inner products of one frame's features [N, D], taken as the steps arrive.

    `add` only keeps a float32 copy of the step; the rows are computed together when the frame is
    done (`release`) or the matrices are read, so that probing adds no reduction to the hot path of
    every denoising pass. Products are taken in float64, so an entry does not depend on which other steps
    were recorded beyond float64 rounding.
    """

    def __init__(self) -> None:
        self.buffer: list[torch.Tensor] = []  # [N, D] float32 per step of the open frame
        self.settled = 0                      # steps of the open frame whose rows are computed
        # Rows settled together: (first step, Gram rows [new, first + new], token-cosine rows [new, first + new]).
        self.blocks: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def add(self, features: torch.Tensor) -> torch.Tensor:
        """Take the features [N, D] of the next step; returns the float32 copy kept (callers may keep it too)."""
        # A copy: a view would keep the pass's whole activation alive (clone: the cheaper call for float32).
        x = features.clone() if features.dtype == torch.float32 else features.float()
        self.buffer.append(x)
        return x

    def _settle(self) -> None:
        """Rows of the steps added since the last call, from one float64 matrix product per chunk of tokens."""
        first, steps = self.settled, len(self.buffer)
        if first == steps:
            return
        x = torch.stack(self.buffer)  # [S, N, D]
        tokens = x.shape[1]
        chunk = max(1, SETTLE_BUDGET // (steps * x.shape[2]))
        gram = torch.zeros(steps - first, steps, dtype=torch.float64, device=x.device)
        cosine = torch.zeros_like(gram)
        for start in range(0, tokens, chunk):
            xt = x[:, start:start + chunk].transpose(0, 1).double()  # [n, S, D]
            dots = xt[:, first:] @ xt.transpose(1, 2)  # [n, new, S]
            norms = torch.linalg.vector_norm(xt, dim=-1)  # [n, S]
            gram += dots.sum(0)
            cosine += (dots / (norms[:, first:, None] * norms[:, None, :]).clamp_min(1e-12)).sum(0)
        cosine /= tokens
        self.blocks.append((first, gram.cpu(), cosine.cpu()))
        self.settled = steps

    def release(self) -> None:
        """The frame is done: compute its rows, then drop the buffered features."""
        self._settle()
        self.buffer, self.settled = [], 0

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Gram of the flattened features, per-token cosine averaged over tokens), each [S, S] float64."""
        self._settle()
        steps = sum(len(g) for _, g, _ in self.blocks)
        gram, token = torch.zeros(steps, steps, dtype=torch.float64), torch.zeros(steps, steps, dtype=torch.float64)
        for first, g, t in self.blocks:
            gram[first:first + len(g), : g.shape[1]], token[first:first + len(t), : t.shape[1]] = g, t
        lower = torch.tril(torch.ones(steps, steps, dtype=torch.bool), -1)
        return torch.where(lower, gram, gram.T), torch.where(lower, token, token.T)


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [..., S, S] from a Gram matrix [..., S, S] of flattened features."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return gram / (norms[..., :, None] * norms[..., None, :]).clamp_min(1e-12)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of [..., S, S] matrices, flattened to [..., S * (S - 1)]."""
    steps = matrix.shape[-1]
    keep = ~torch.eye(steps, dtype=torch.bool, device=matrix.device)
    return matrix[..., keep]
