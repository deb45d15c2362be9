"""Analytic FLOPs of the transformer blocks of both families: what `probe bench` sets measured speed against.

Counted: the blocks' matrix multiplies (qkv, attention output, MLP) and attention (scores and the
weighted sum over the keys a query may see), a multiply-add as 2 FLOPs. Not counted: embeddings,
norms, modulation and the output head (under 2% here at width 128), nor the masked-out half of a
block-causal score matrix. Training counts a backward pass as twice the forward.
"""

from __future__ import annotations


def block_flops(queries: int, keys: int, width: int, mlp_ratio: float) -> float:
    """FLOPs of one block for `queries` tokens, each attending to `keys` tokens on average."""
    linear = 2 * queries * width * (4 * width + 2 * int(width * mlp_ratio))
    return float(linear + 4 * queries * keys * width)


def _causal_pass(config: dict, blocks: int, first: int, frames: int) -> float:
    """Blocks run over `frames` frames after `first` cached ones, block-causal over frames."""
    n, w, r = _tokens(config), config["width"], config["mlp_ratio"]
    return sum(blocks * block_flops(n, (first + f + 1) * n, w, r) for f in range(frames))


def _tokens(config: dict) -> int:
    return (config["frame_size"] // config["patch_size"]) ** 2


def _decoder_pass(config: dict, frames: int = 1) -> float:
    n = _tokens(config)
    return frames * config["decoder_depth"] * block_flops(2 * n, 2 * n, config["width"], config["mlp_ratio"])


def generation_flops(config: dict, context: int, frames: int, steps: int) -> list[float]:
    """Forward FLOPs of `generate` as the sampler runs it, one entry per segment: [prefill of the context,
    generated frame 1 (its steps and its cache pass), frame 2, ...]. `config` as `model.get_config()`."""
    family = config["family"]
    if family == "baseline":
        depth = config["depth"]
        costs = [_causal_pass(config, depth, 0, context)]
        costs += [(steps + 1) * _causal_pass(config, depth, context + f, 1) for f in range(frames)]
    elif family == "scd":
        depth = config["encoder_depth"]
        costs = [_causal_pass(config, depth, 0, context)]
        costs += [steps * _decoder_pass(config) + _causal_pass(config, depth, context + f, 1) for f in range(frames)]
    else:
        raise ValueError(f"unknown model family {family!r}; accepted: baseline, scd")
    return costs


def training_flops(config: dict, frames: int, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward) on `batch_size` clips of `frames` frames."""
    family = config["family"]
    if family == "baseline":
        forward = _causal_pass(config, config["depth"], 0, frames)
    elif family == "scd":  # the encoder skips the last frame (no decoder reads its output)
        forward = _causal_pass(config, config["encoder_depth"], 0, frames - 1) + _decoder_pass(config, frames)
    else:
        raise ValueError(f"unknown model family {family!r}; accepted: baseline, scd")
    return 3 * batch_size * forward
