"""What a probe must know of a causal Wan / SkyReels-V2 model (`scd.causal_wan.CausalWan`): its blocks, its
tokens, its chunks and where q and k are hooked. Making the model run (loading, the causal attention
processor, the KV cache, text, VAE) is `scd`'s; see `scd.causal_wan` and `scd.wan_pipeline`."""

from __future__ import annotations

from probes.adapters.builtin import Layout


def diffusers_layout(model) -> Layout:
    """Blocks `transformer.blocks.{i}` with HookPoints for their input and output (the features) and `attn1`'s q
    and k (cached keys included); `frames_per_block` frames are denoised together and see each other."""
    blocks = tuple(f"transformer.blocks.{i}" for i in range(len(model.transformer.blocks)))
    paths = {"hook_resid_pre": "hook_resid_pre", "hook_resid_post": "hook_resid_post", "attn.hook_q": "attn1.hook_q",
             "attn.hook_k": "attn1.hook_k"}
    return Layout(blocks, model.tokens_per_frame, hook_paths=paths,
                  frames_per_block=model.frames_per_block, token_grid=tuple(model.grid))
