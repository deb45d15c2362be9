"""Analytic FLOPs of the transformer blocks of both families: what `probe bench` sets measured speed against.

Counted: the blocks' matrix multiplies (qkv, attention output, MLP) and attention (scores and the
weighted sum over the keys a query may see), a multiply-add as 2 FLOPs. Not counted: embeddings,
norms, modulation and the output head (under 2% here at width 128), nor the masked-out half of a
block-causal score matrix. Training counts a backward pass as twice the forward.
"""

from __future__ import annotations

from scd.errors import ModelError


def block_flops(queries: int, keys: int, width: int, mlp_ratio: float) -> float:
    """FLOPs of one block for `queries` tokens, each attending to `keys` tokens on average."""
    linear = 2 * queries * width * (4 * width + 2 * int(width * mlp_ratio))
    return float(linear + 4 * queries * keys * width)


def _causal_pass(config: dict, blocks: int, first: int, frames: int) -> float:
    """Blocks run over `frames` frames after `first` cached ones, block-causal over frames."""
    n, w, r = tokens_per_frame(config), config["width"], config["mlp_ratio"]
    return sum(blocks * block_flops(n, (first + f + 1) * n, w, r) for f in range(frames))


def tokens_per_frame(config: dict) -> int:
    """Tokens of one frame of a model config dict (`model.get_config()`; no frame_width: square)."""
    height, p = config["frame_size"], config["patch_size"]
    return (height // p) * ((config.get("frame_width") or height) // p)


def _decoder_pass(config: dict, frames: int = 1) -> float:
    n = tokens_per_frame(config)
    return frames * config["decoder_depth"] * block_flops(2 * n, 2 * n, config["width"], config["mlp_ratio"])


def generation_flops(config: dict, context: int, frames: int, steps: int) -> list[float]:
    """Forward FLOPs of `generate` on the path to each generated frame, as latency is measured: entry 0 is
    the context's prefill and the first frame's steps (time to first frame), entry k the cache pass of
    frame k-1 and the steps of frame k. `config` as `model.get_config()`."""
    family = config["family"]
    if family == "baseline":
        depth = config["depth"]
        step = lambda f: _causal_pass(config, depth, context + f, 1)  # noqa: E731  one pass of frame f
        cache = step
    elif family == "scd":
        depth = config["encoder_depth"]
        step = lambda f: _decoder_pass(config)  # noqa: E731
        cache = lambda f: _causal_pass(config, depth, context + f, 1)  # noqa: E731
    else:
        raise ModelError(f"unknown model family {family!r}; accepted: baseline, scd")
    costs = [_causal_pass(config, depth, 0, context) + steps * step(0)]
    costs += [cache(f - 1) + steps * step(f) for f in range(1, frames)]
    return costs


def training_flops(config: dict, frames: int, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward) on `batch_size` clips of `frames` frames."""
    family = config["family"]
    if family == "baseline":
        forward = _causal_pass(config, config["depth"], 0, frames)
    elif family == "scd":  # the encoder skips the last frame (no decoder reads its output)
        forward = _causal_pass(config, config["encoder_depth"], 0, frames - 1) + _decoder_pass(config, frames)
    else:
        raise ModelError(f"unknown model family {family!r}; accepted: baseline, scd")
    return 3 * batch_size * forward
