"""The Probe against independent computations: raw torch forward hooks, an explicit softmax, a second backend."""

import math

import pytest
import torch

from probes import Probe, load_run
from probes.probe import ProbeError
from probes.reductions import cosine_from_gram
from scd.data import VideoBenchmark
from scd.sampling import _observers, generate

LAYERS = [1, 3]
CONTEXT, FRAMES, STEPS = 3, 2, 4


@pytest.fixture(scope="module")
def clip():
    return VideoBenchmark("val", frames=CONTEXT + FRAMES, size=16).clip(0)


def _generate(model, clip, **kwargs):
    return generate(model, clip[:CONTEXT], FRAMES, steps=STEPS, seed=0, **kwargs)


def _raw_capture(model, clip, use_cache):
    """Per (frame, step): the last frame's block outputs, q and k, read with plain register_forward_hook."""
    n = model.config.tokens_per_frame
    state, seen, handles = {}, {}, []

    def on_step(frame, step, timestep):
        state["key"] = (frame, step) if step is not None else None

    def keep(name):
        def hook(module, args, output):
            if state.get("key") is not None:
                tensor = output[0] if isinstance(output, tuple) else output
                seen.setdefault(name, {})[state["key"]] = tensor[0].detach().clone()
        return hook

    for layer in LAYERS:
        block = model.blocks[layer]
        handles.append(block.register_forward_hook(keep(("block", layer))))
        handles.append(block.attn.hook_q.register_forward_hook(keep(("q", layer))))
        handles.append(block.attn.hook_k.register_forward_hook(keep(("k", layer))))
    try:
        video = _generate(model, clip, callback=on_step, use_cache=use_cache)
    finally:
        for h in handles:
            h.remove()
    return video, seen, n


def _explicit_mass(q, k, frame, n):
    """softmax(q k^T / sqrt(d)) over the full matrix (block-causal), summed per key frame, mean over the frame's queries."""
    query_frames = torch.arange(q.shape[0]) // n + (frame + 1 - q.shape[0] // n)
    key_frames = torch.arange(k.shape[0]) // n
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(key_frames[None, :] > query_frames[:, None], float("-inf"))
    per_frame = scores.softmax(-1) @ torch.nn.functional.one_hot(key_frames, frame + 1).double()  # [H, Lq, frame+1]
    return per_frame[:, -n:].mean(1)  # the frame being denoised: the last n queries


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "recompute"])
@pytest.mark.parametrize("backend", ["hookpoints", "nnsight"])
def test_features_and_attention_match_raw_hooks_and_an_explicit_softmax(tiny_model, clip, backend, use_cache):
    reference, seen, n = _raw_capture(tiny_model, clip, use_cache)
    with Probe(tiny_model, LAYERS, backend=backend) as probe:
        video = _generate(tiny_model, clip, use_cache=use_cache)
    assert torch.equal(video, reference)  # probing does not change the generated video
    frames = list(range(CONTEXT, CONTEXT + FRAMES))
    assert probe.frames == frames
    for layer in LAYERS:
        features, mass = probe.features(layer), probe.attention(layer)
        assert features.shape == (FRAMES, STEPS, n, tiny_model.config.width)
        assert mass.shape == (FRAMES, STEPS, tiny_model.config.heads, CONTEXT + FRAMES)
        for i, frame in enumerate(frames):
            for step in range(STEPS):
                raw = seen[("block", layer)][(frame, step)][-n:]
                assert torch.equal(features[i, step], raw.half())  # kept as a run stores them: float16
                expected = _explicit_mass(seen[("q", layer)][(frame, step)], seen[("k", layer)][(frame, step)], frame, n)
                assert (mass[i, step, :, : frame + 1].double() - expected).abs().max() <= 1e-5
                assert (mass[i, step, :, frame + 1:] == 0).all()  # later frames are masked out


def _explicit_map(q, k, frame, n, bands):
    """The pooled map by hand: the full float64 softmax of the frame's queries over every key (block-causal), then
    per cell (query band x key band) the mean probability of one key, averaged over the band's queries."""
    probabilities = _explicit_probabilities(q, k, frame, n)  # [H, n, (frame + 1) * n]
    band = _bands(n, bands)
    cells = torch.zeros(probabilities.shape[0], bands, (frame + 1) * bands, dtype=torch.float64)
    for row in range(bands):
        for f in range(frame + 1):
            for col in range(bands):
                keys = [f * n + t for t in band[col]]
                cells[:, row, f * bands + col] = probabilities[:, band[row]][:, :, keys].mean((1, 2))
    return cells


def _bands(n, bands):
    return [list(range(n))[b * n // bands: (b + 1) * n // bands] for b in range(bands)]  # contiguous, even bands


def _explicit_probabilities(q, k, frame, n):
    query_frames = torch.arange(q.shape[0]) // n + (frame + 1 - q.shape[0] // n)
    key_frames = torch.arange(k.shape[0]) // n
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(key_frames[None, :] > query_frames[:, None], float("-inf"))
    return scores.softmax(-1)[:, -n:]


@pytest.mark.parametrize("bands", [3, 16], ids=["3-bands", "unpooled"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "recompute"])
@pytest.mark.parametrize("backend", ["hookpoints", "nnsight"])
def test_the_pooled_map_matches_an_explicit_softmax(tiny_model, clip, backend, use_cache, bands):
    _, seen, n = _raw_capture(tiny_model, clip, use_cache)
    assert n == 16
    with Probe(tiny_model, LAYERS, backend=backend, bands=bands, capture="attention") as probe:
        _generate(tiny_model, clip, use_cache=use_cache)
    for layer in LAYERS:
        maps = probe.attention_map(layer)
        assert maps.shape == (FRAMES, STEPS, tiny_model.config.heads, bands, (CONTEXT + FRAMES) * bands)
        for i, frame in enumerate(range(CONTEXT, CONTEXT + FRAMES)):
            for step in range(STEPS):
                expected = _explicit_map(seen[("q", layer)][(frame, step)], seen[("k", layer)][(frame, step)], frame, n,
                                         bands)
                assert (maps[i, step, ..., : (frame + 1) * bands].double() - expected).abs().max() <= 1e-5
                assert (maps[i, step, ..., (frame + 1) * bands:] == 0).all()
                # the map is per key: times the keys of each cell and summed, it gives the per-frame mass
                sizes = torch.tensor([len(b) for b in _bands(n, bands)]).repeat(frame + 1)
                rows = torch.tensor([len(b) for b in _bands(n, bands)], dtype=torch.float32)[:, None] / n
                per_frame = (maps[i, step, ..., : (frame + 1) * bands] * sizes * rows).sum(1).view(-1, frame + 1, bands).sum(-1)
                assert (per_frame - probe.attention(layer)[i, step, :, : frame + 1]).abs().max() <= 1e-5


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "recompute"])
def test_frame_diagonal_blocks_put_nothing_on_earlier_frames(tiny_model, clip, use_cache):
    from scd.zoo import build_model

    local = build_model({**tiny_model.get_config(), "frame_local_blocks": 2})
    local.load_state_dict(tiny_model.state_dict())
    with Probe(local, "all", capture="attention") as probe:
        video = _generate(local, clip, use_cache=use_cache)
    assert probe.layout.roles == ("causal", "causal", "frame-local", "frame-local")
    for layer in range(4):
        mass = probe.attention(layer)
        earlier = torch.stack([mass[i, ..., :frame].sum(-1) for i, frame in enumerate(range(CONTEXT, CONTEXT + FRAMES))])
        if layer >= 2:
            assert (earlier == 0).all() and (probe.attention_map(layer)[..., : CONTEXT * 3] == 0).all()
        else:
            assert (earlier > 0.01).all()
    unmasked = _generate(tiny_model, clip, use_cache=use_cache)
    assert not torch.equal(video[CONTEXT:], unmasked[CONTEXT:])  # the mask is really applied


def test_the_two_backends_agree(tiny_model, clip):
    results = {}
    for backend in ("hookpoints", "nnsight"):
        with Probe(tiny_model, LAYERS, backend=backend, hook="hook_mlp_out") as probe:
            _generate(tiny_model, clip)
        results[backend] = probe
    a, b = results["hookpoints"], results["nnsight"]
    for layer in LAYERS:
        assert (a.features(layer) - b.features(layer)).abs().max() <= 1e-6
        assert (a.attention(layer) - b.attention(layer)).abs().max() <= 1e-6
        assert (a.token_cosine(layer) - b.token_cosine(layer)).abs().max() <= 1e-6


def test_stream_mode_keeps_reductions_equal_to_full_mode(tiny_model, clip):
    probes = {}
    for mode in ("full", "stream"):
        with Probe(tiny_model, LAYERS, mode=mode, pca_tokens=5, sample_seed=3) as probe:
            _generate(tiny_model, clip)
        probes[mode] = probe
    full, stream = probes["full"], probes["stream"]
    _, seen, n = _raw_capture(tiny_model, clip, use_cache=True)  # float32 block outputs, by a plain forward hook
    frames = range(CONTEXT, CONTEXT + FRAMES)
    for layer in LAYERS:
        x = torch.stack([torch.stack([seen[("block", layer)][(f, s)][-n:] for s in range(STEPS)]) for f in frames])
        x = x.double()  # [F, S, N, D]
        per_token = torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1).mean(-1)
        flat = x.flatten(2)
        flat_cos = torch.nn.functional.cosine_similarity(flat[:, :, None], flat[:, None, :], dim=-1)
        gram, token_cosine = stream.gram(layer), stream.token_cosine(layer)
        assert torch.equal(gram, full.gram(layer)) and torch.equal(token_cosine, full.token_cosine(layer))
        assert (token_cosine - per_token).abs().max() <= 1e-4
        assert (gram - flat @ flat.transpose(1, 2)).abs().max() <= 1e-4 * gram.abs().max()
        assert (cosine_from_gram(gram) - flat_cos).abs().max() <= 1e-4
        index = stream.token_index(layer)
        assert len(index) == 5 and torch.equal(stream.features(layer), full.features(layer)[:, :, index])
        assert torch.equal(stream.attention(layer), full.attention(layer))


def test_frames_and_steps_select_what_is_recorded(tiny_model, clip):
    with Probe(tiny_model, [2]) as everything:
        _generate(tiny_model, clip)
    with Probe(tiny_model, [2], frames=[CONTEXT + 1], steps=[0, 3], capture=("features",)) as some:
        _generate(tiny_model, clip)
    assert some.frames == [CONTEXT + 1]
    assert torch.equal(some.features(2), everything.features(2)[1:, [0, 3]])
    gram = everything.token_cosine(2)[1:][:, [0, 3]][:, :, [0, 3]]
    assert (some.token_cosine(2) - gram).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="layer 2 has no recorded attention"):
        some.attention(2)


@pytest.mark.parametrize("backend", ["hookpoints", "nnsight"])
def test_hooks_are_gone_after_an_exception(tiny_model, clip, backend):
    def state():
        return [(name, dict(m._forward_hooks), dict(m._forward_pre_hooks), sorted(m.__dict__))
                for name, m in tiny_model.named_modules()] + [[hp.fwd_hooks for hp in tiny_model.hook_dict.values()]]

    before = state()
    reference = _generate(tiny_model, clip)
    with pytest.raises(RuntimeError, match="boom"), Probe(tiny_model, LAYERS, backend=backend):
        def explode(frame, step, timestep):
            if step == 2:
                raise RuntimeError("boom")
        _generate(tiny_model, clip, callback=explode)
    assert state() == before
    assert not _observers.get(tiny_model)
    assert torch.equal(_generate(tiny_model, clip), reference)


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": [4]}, r"layer 4 is out of range; accepted: block indices in 0..3"),
    ({"layers": [-1]}, r"layer -1 is out of range; accepted: block indices in 0..3"),
    ({"layers": []}, "no layer to probe"),
    ({"layers": [1, 1]}, "duplicate layers"),
    ({"layers": "some"}, "or 'all'"),
    ({"capture": ("features", "logits")}, "capture: unknown kind 'logits'; accepted: features, attention"),
    ({"mode": "lazy"}, "unknown probe mode 'lazy'; accepted: full, stream"),
    ({"hook": "attn.hook_q"}, "unknown feature hook"),
    ({"backend": "pyvene"}, "unknown probe backend 'pyvene'; accepted: hookpoints, nnsight"),
])
def test_bad_arguments_name_the_accepted_values(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with Probe(tiny_model, **{"layers": [1], **kwargs}):
            pass


def test_a_batch_is_refused(tiny_model, clip):
    with pytest.raises(ProbeError, match="one video at a time"), Probe(tiny_model, [1]):
        generate(tiny_model, clip[None, :CONTEXT].expand(2, -1, -1, -1, -1), 1, steps=2)


def test_save_writes_the_run_directory(tiny_model, clip, tmp_path):
    with Probe(tiny_model, "all", mode="stream", pca_tokens=8) as probe:
        video = _generate(tiny_model, clip)
    with pytest.raises(ProbeError, match="nothing to save"):
        Probe(tiny_model, [1]).save(tmp_path / "empty")
    path = probe.save(tmp_path / "run", ground_truth=clip, seed=0, clip=0)
    run = load_run(path)
    m = run.manifest
    assert m["layers"] == [0, 1, 2, 3] and m["frames"] == [3, 4] and m["context"] == CONTEXT
    assert m["num_frames"] == CONTEXT + FRAMES and m["steps"] == list(range(STEPS)) and m["mode"] == "stream"
    assert len(m["timesteps"]) == STEPS and m["timesteps"][0] == 1000.0 and m["seed"] == 0
    assert run.features(2).shape == (FRAMES, STEPS, 8, tiny_model.config.width) and run.features(2).dtype == torch.float16
    assert torch.equal(run.token_cosine(2), probe.token_cosine(2)) and torch.equal(run.token_index(2), probe.token_index(2))
    assert torch.allclose(run.attention(2).sum(-1), torch.ones(FRAMES, STEPS, tiny_model.config.heads))
    generated, truth = run.video()
    assert generated.shape == truth.shape == (CONTEXT + FRAMES, 16, 16, 3)
    assert (generated[:CONTEXT].astype(int) - truth[:CONTEXT]).__abs__().max() <= 1  # the context is the clip
    pixels = video[CONTEXT:].clamp(-1, 1).permute(0, 2, 3, 1).numpy()  # uint8 holds the clamped frames
    assert abs(generated[CONTEXT:].astype(float) / 127.5 - 1 - pixels).max() <= 0.5 / 127.5 + 1e-6
    metrics = run.metrics
    assert set(metrics.metric) == {"token_cosine_mean", "token_cosine_min", "flat_cosine_mean", "flat_cosine_min",
                                   "attention_earlier", "attention_same_frame"}
    assert len(metrics) == 4 * FRAMES * 6
    row = metrics[(metrics.layer == 2) & (metrics.frame == 4) & (metrics.metric == "attention_earlier")].value.item()
    assert abs(row - float(run.attention(2)[1, :, :, :4].sum(-1).mean())) <= 1e-6


def test_the_printed_per_key_ratio_is_the_analyses_one(tiny_model, clip, tmp_path):
    """Two paths to one number: the command's table (from metrics.parquet) and analyses.sparsity (from the tensor)."""
    from analyses.sparsity import per_key_ratio
    from probe_cli.probing import _per_key_ratio

    with Probe(tiny_model, LAYERS, capture="attention") as probe:
        _generate(tiny_model, clip)
    run = load_run(probe.save(tmp_path / "run"))
    printed = _per_key_ratio(run.metrics, run)
    for layer in LAYERS:
        expected = per_key_ratio(run.attention(layer), run.manifest["frames"]).item()
        assert printed[layer] == pytest.approx(expected, rel=1e-5)
