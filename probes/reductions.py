"""Cross-step reductions of one frame's features, computed as the denoising steps arrive.

The paper's first finding is about the step x step cosine similarity of a layer's features while
one frame is denoised. `StepGram` builds that matrix row by row: at step s it takes the inner
products of the new features with those of every earlier step of the same frame (computed when the
frame is done, off the hot path), then the frame's buffer is dropped. Two similarities come out of
the same inner products:

- per-token cosine, averaged over tokens: mean_n cos(x_s[n], x_t[n]) (the default in analyses);
- flattened cosine: cos(vec x_s, vec x_t), from the Gram matrix of the flattened features;
- centred per-token cosine: the same per-token cosine after the token mean of each step is removed
  (x_s[n] - mean_m x_s[m]): a component shared by every token of the frame (a timestep signal, a
  bias) makes raw cosines high whatever the tokens encode, and is removed here;
- linear CKA (Kornblith et al., 2019) between steps: ||Xc_s^T Xc_t||_F^2 / (||Xc_s^T Xc_s||_F
  ||Xc_t^T Xc_t||_F) with Xc the token-centred features [N, D]; invariant to rotations and isotropic
  scaling of the feature space, so it compares what the tokens encode, not their coordinates.

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
        # Rows settled together: (first step, rows [new, first + new] of the Gram, the token cosine, the centred
        # token cosine and the HSIC ||Xc_s^T Xc_t||_F^2 of CKA).
        self.blocks: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
        mean = x.double().mean(1)  # [S, D]: each step's token mean, removed for the centred measures
        chunk = max(1, SETTLE_BUDGET // (steps * x.shape[2]))
        gram = torch.zeros(steps - first, steps, dtype=torch.float64, device=x.device)
        cosine, centred = torch.zeros_like(gram), torch.zeros_like(gram)
        for start in range(0, tokens, chunk):
            xt = x[:, start:start + chunk].transpose(0, 1).double()  # [n, S, D]
            for raw, out in ((True, cosine), (False, centred)):
                xs = xt if raw else xt - mean
                dots = xs[:, first:] @ xs.transpose(1, 2)  # [n, new, S]
                norms = torch.linalg.vector_norm(xs, dim=-1)  # [n, S]
                if raw:
                    gram += dots.sum(0)
                out += (dots / (norms[:, first:, None] * norms[:, None, :]).clamp_min(1e-12)).sum(0)
        cosine /= tokens
        centred /= tokens
        self.blocks.append((first, gram.cpu(), cosine.cpu(), centred.cpu(), hsic_rows(x.double() - mean[:, None], first).cpu()))
        self.settled = steps
    def release(self) -> None:
        """The frame is done: compute its rows, then drop the buffered features."""
        self._settle()
        self.buffer, self.settled = [], 0

    def _assemble(self, which: int) -> torch.Tensor:
        """The symmetric [S, S] matrix of one of the settled quantities (1 Gram, 2 cosine, 3 centred, 4 HSIC)."""
        self._settle()
        steps = sum(len(block[1]) for block in self.blocks)
        out = torch.zeros(steps, steps, dtype=torch.float64)
        for block in self.blocks:
            first, rows = block[0], block[which]
            out[first:first + len(rows), : rows.shape[1]] = rows
        lower = torch.tril(torch.ones(steps, steps, dtype=torch.bool), -1)
        return torch.where(lower, out, out.T)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Gram of the flattened features, per-token cosine averaged over tokens), each [S, S] float64."""
        return self._assemble(1), self._assemble(2)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token cosine of the token-centred features averaged over tokens, linear CKA), each [S, S] float64."""
        hsic = self._assemble(4)
        norms = hsic.diagonal().clamp_min(0).sqrt()
        return self._assemble(3), hsic / (norms[:, None] * norms[None, :]).clamp_min(1e-300)


def hsic_rows(centred: torch.Tensor, first: int) -> torch.Tensor:
    """[S - first, S]: ||Xc_s^T Xc_t||_F^2 for steps s >= first and every t, from token-centred features [S, N, D]
    (the unnormalised HSIC of linear CKA), by the smaller of the token x token or feature x feature products."""
    steps, tokens, width = centred.shape
    if tokens <= width:  # <Kc_s, Kc_t>_F with Kc = Xc Xc^T, N x N
        flat = (centred @ centred.transpose(1, 2)).flatten(1)
        return flat[first:] @ flat.T
    rows = torch.empty(steps - first, steps, dtype=centred.dtype, device=centred.device)
    for i, s in enumerate(range(first, steps)):
        for t in range(steps):
            rows[i, t] = (centred[s].T @ centred[t]).square().sum()
    return rows


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [..., S, S] from a Gram matrix [..., S, S] of flattened features."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return gram / (norms[..., :, None] * norms[..., None, :]).clamp_min(1e-12)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of [..., S, S] matrices, flattened to [..., S * (S - 1)]."""
    steps = matrix.shape[-1]
    keep = ~torch.eye(steps, dtype=torch.bool, device=matrix.device)
    return matrix[..., keep]
