"""The text's share of a Wan block's attention update, against raw torch hooks on the block, its norm2 and attn2."""

from __future__ import annotations

import pytest
import torch

from probes import Probe, ProbeError, load_run
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.sampling import generate
from scd.wan.causal_wan import CausalWan
from tests.wan_tiny import LATENT, tiny

CONTEXT, FRAMES, STEPS = 2, 2, 3


def raw_shares(model, layers, context):
    """Per (layer, frame, step): ||attn2 out|| / (||norm2 input - block input|| + ||attn2 out||) over the frame's
    tokens (the last chunk of the pass), read with plain torch hooks."""
    state, seen, handles = {}, {}, []
    n = model.tokens_per_frame

    def on_step(frame, step, timestep):
        state["key"] = (frame, step) if step is not None else None

    for layer in layers:
        block = model.transformer.blocks[layer]

        def pre(module, args, layer=layer):
            if state.get("key"):
                seen[("in", layer, *state["key"])] = args[0][0, -n:].detach().double()

        def mid(module, args, layer=layer):
            if state.get("key"):
                seen[("mid", layer, *state["key"])] = args[0][0, -n:].detach().double()

        def out(module, args, output, layer=layer):
            if state.get("key"):
                seen[("cross", layer, *state["key"])] = output[0, -n:].detach().double()
        handles += [block.register_forward_pre_hook(pre), block.norm2.register_forward_pre_hook(mid),
                    block.attn2.register_forward_hook(out)]
    try:
        generate(model, context, FRAMES, steps=STEPS, callback=on_step)
    finally:
        for h in handles:
            h.remove()
    shares = {}
    for (kind, layer, frame, step), _ in list(seen.items()):
        if kind == "cross":
            own = (seen[("mid", layer, frame, step)] - seen[("in", layer, frame, step)]).norm()
            text = seen[("cross", layer, frame, step)].norm()
            shares[(layer, frame, step)] = float(text / (own + text))
    return shares


@pytest.mark.parametrize("backend", ["hookpoints", "nnsight"])
@pytest.mark.parametrize("family", ["wan", "skyreels"])
def test_the_text_share_equals_raw_hooks_on_the_block(family, backend, tmp_path):
    model = CausalWan(tiny(family), LATENT, frames_per_block=1)
    model.set_prompt(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)))
    context = torch.randn(CONTEXT, 4, *LATENT, generator=torch.Generator().manual_seed(1))
    expected = raw_shares(model, [0, 1], context)
    with Probe(model, [0, 1], backend=backend) as probe:
        generate(model, context, FRAMES, steps=STEPS)
    for layer in (0, 1):
        share = probe.attention_text_share(layer)
        assert share.shape == (FRAMES, STEPS)
        for i, frame in enumerate(probe.frames):
            for step in range(STEPS):
                assert abs(float(share[i, step]) - expected[(layer, frame, step)]) <= 1e-5
    loaded = load_run(probe.save(tmp_path / "run"))
    assert torch.equal(loaded.attention_text_share(1), probe.attention_text_share(1))
    # Without a prompt the cross-attention still adds its biases' output: the share moves with the text.
    model.set_prompt(torch.zeros(5, 16))
    with Probe(model, [1]) as silent:
        generate(model, context, FRAMES, steps=STEPS)
    assert not torch.allclose(silent.attention_text_share(1), probe.attention_text_share(1))


def test_the_built_in_models_have_no_text_share_and_no_cross_attention_hooks():
    model = CausalVideoDiffuser(BASELINE_SIZES["tiny"])
    with Probe(model, [0]) as probe:
        generate(model, torch.zeros(2, 3, 16, 16), 1, steps=2)
    with pytest.raises(Exception, match="text_share"):
        probe.attention_text_share(0)
    with pytest.raises(ProbeError, match="no feature hook 'hook_cross_out'"):
        Probe(model, [0], hook="hook_cross_out")
