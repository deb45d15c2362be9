"""Cross-step reductions of one frame's features, computed as the denoising steps arrive.

The paper's first finding is about the step x step cosine similarity of a layer's features while
one frame is denoised. `StepGram` builds that matrix row by row: at step s it takes the inner
products of the new features with those of every earlier step of the same frame, then the frame's
buffer is dropped. Two similarities come out of the same inner products:

- per-token cosine, averaged over tokens: mean_n cos(x_s[n], x_t[n]) (the default in analyses);
- flattened cosine: cos(vec x_s, vec x_t), from the Gram matrix of the flattened features.

An exact row needs every earlier step of the frame, so memory holds one frame's steps at a time
(per layer), never all frames; what is kept afterwards is S x S per frame.
"""

from __future__ import annotations

import torch


class StepGram:
    """Step x step inner products of one frame's features [N, D], one step at a time."""

    def __init__(self) -> None:
        self.buffer: list[torch.Tensor] = []  # [N, D] float32 per step so far
        self.norms: list[torch.Tensor] = []   # [N] per step so far
        self.gram_rows: list[torch.Tensor] = []
        self.token_rows: list[torch.Tensor] = []

    def add(self, features: torch.Tensor) -> None:
        """Take the features [N, D] of the next step."""
        x = features.to(torch.float32, copy=True)  # a copy: a view would keep the pass's whole activation alive
        norm = torch.linalg.vector_norm(x, dim=-1)
        self.buffer.append(x)
        self.norms.append(norm)
        dots = torch.stack([torch.linalg.vecdot(past, x) for past in self.buffer]).double()  # [s + 1, N]
        norms = torch.stack(self.norms).double() * norm.double()
        self.gram_rows.append(dots.sum(1).cpu())
        self.token_rows.append((dots / norms.clamp_min(1e-12)).mean(1).cpu())

    def release(self) -> None:
        """Drop the buffered features once the frame is done; the rows already hold what is needed."""
        self.buffer, self.norms = [], []

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Gram of the flattened features, per-token cosine averaged over tokens), each [S, S] float64."""
        steps = len(self.gram_rows)
        gram, token = torch.zeros(steps, steps, dtype=torch.float64), torch.zeros(steps, steps, dtype=torch.float64)
        for s, (g, t) in enumerate(zip(self.gram_rows, self.token_rows, strict=True)):
            gram[s, : s + 1], token[s, : s + 1] = g, t
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
