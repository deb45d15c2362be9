"""Issue 26's measures against hand computations: centred cosine, linear CKA, per-layer nats relative to uniform and
the lit share, the functional fit; a layer's finding-2 numbers do not depend on which other layers were probed;
each clip of a sweep gets its own noise; the permuted-weights control."""

import math

import numpy as np
import pytest
import torch

from analyses.redundancy import held_out_pairs, held_out_r2, step_grid
from analyses.similarity import cosine_matrix, paired_similarity
from analyses.sparsity import (
    attention_measures,
    context_key_nats,
    earlier_key_nats,
    lit_share,
    measures_by_head,
    uniform_key_nats,
)
from probes import Probe, load_run
from probes.reductions import StepGram
from probes.sweep import DRAW_STRIDE, noise_seed
from scd.data import VideoBenchmark
from scd.sampling import generate
from scd.zoo import permute_weights


def _centred_cosine_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over tokens of cos(a[n] - mean_m a[m], b[n] - mean_m b[m]), by explicit loops."""
    a, b = a - a.mean(0), b - b.mean(0)
    total = 0.0
    for n in range(a.shape[0]):
        total += float(a[n] @ b[n]) / math.sqrt(float(a[n] @ a[n]) * float(b[n] @ b[n]))
    return total / a.shape[0]


def _cka_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) as HSIC with centring matrices: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    n = a.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = a @ a.T, b @ b.T
    hsic = lambda x, y: np.trace(x @ h @ y @ h)  # noqa: E731
    return float(hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_)))


@pytest.mark.parametrize("tokens, width", [(6, 10), (12, 5)])  # both products of hsic_rows: N <= D and N > D
def test_centred_cosine_and_cka_against_hand_computations(tokens, width):
    g = torch.Generator().manual_seed(tokens)
    shared = torch.randn(1, width, generator=g) * 5  # a component every token shares: raw cosine near 1
    steps = [shared + torch.randn(tokens, width, generator=g) for _ in range(4)]
    gram = StepGram()
    for x in steps[:2]:
        gram.add(x)
    gram.matrices()  # settle two steps first: the rows of later steps are added in a second block
    for x in steps[2:]:
        gram.add(x)
    centred, cka = gram.centred()
    x = torch.stack(steps).double().numpy()
    for s in range(4):
        for t in range(4):
            assert centred[s, t].item() == pytest.approx(_centred_cosine_by_hand(x[s], x[t]), abs=1e-12)
            assert cka[s, t].item() == pytest.approx(_cka_by_hand(x[s], x[t]), abs=1e-12)
    # the shared component makes raw cosines high; centring removes it
    raw = gram.matrices()[1]
    assert raw[0, 1] > 0.8 and abs(centred[0, 1]) < 0.6
    # the analyses' paired measures (controls) agree with the probe's reductions
    stacked = torch.stack(steps)
    torch.testing.assert_close(cosine_matrix(stacked, "centred"), centred, atol=1e-12, rtol=0)
    torch.testing.assert_close(cosine_matrix(stacked, "cka"), cka, atol=1e-12, rtol=0)
    other = torch.randn(4, tokens, width, generator=g)
    assert paired_similarity(stacked, other, "cka")[1, 2].item() == pytest.approx(
        _cka_by_hand(x[1], other[2].double().numpy()), abs=1e-12)
    # CKA is invariant to an orthogonal transform and an isotropic scale of the feature space
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    rotated = (stacked.double() @ rotation) * 3.0
    torch.testing.assert_close(paired_similarity(stacked, rotated, "cka").diagonal(), torch.ones(4, dtype=torch.float64))


def test_per_layer_nats_and_lit_share_by_hand():
    frames, tokens, bands = [2, 3], 4, 1
    # frame 2 sees 3 frames (12 keys): uniform per key 1/12; frame 3 sees 16 keys
    uniform = uniform_key_nats(frames, "causal", 1, tokens)
    assert uniform.tolist() == pytest.approx([-math.log(12), -math.log(16)])
    maps = torch.zeros(2, 1, 4)  # [F, g, T * g]: per-key probability of each frame's keys
    maps[0, 0, :3] = torch.tensor([1 / 12, math.exp(-8) / 12, 1 / 24]) * 1.0  # frame 2: keys of 0, 1 (context), own
    maps[1, 0, :4] = torch.tensor([1 / 16, 1 / 16, math.exp(-6.5) / 16, 0.1])  # frame 3: keys of 0, 1, 2, own
    nats = context_key_nats(maps, frames, bands, uniform)
    assert nats.tolist() == pytest.approx([0.0, -8.0, 0.0, 0.0, -6.5], abs=1e-6)  # context cells, frame-major (float32 map)
    assert lit_share(nats, 7.0).item() == pytest.approx(4 / 5)  # one cell more than 7 nats below uniform
    assert lit_share(nats, 6.0).item() == pytest.approx(3 / 5)
    # a layer that cannot see a frame (SCD's decoder sees only the frame before) is not dark there
    decoder = context_key_nats(maps[1:], [3], bands, uniform_key_nats([3], "decoder", 1, tokens), "decoder")
    assert decoder.tolist() == pytest.approx([math.log(math.exp(-6.5) / 16 * 8)], abs=1e-6)  # frame 2 only, 8 keys
    assert context_key_nats(maps[1:], [3], bands, uniform[1:], "frame-local").numel() == 0
    # earlier_key_nats: per earlier key over uniform per key; uniform attention gives 0 nats, own frame only -inf
    mass = torch.zeros(2, 1, 1, 4)
    for i, frame in enumerate(frames):
        mass[i, ..., : frame + 1] = 1 / (frame + 1)
    assert earlier_key_nats(mass, frames).item() == pytest.approx(0.0, abs=1e-7)  # float32 mass
    halved = mass.clone()
    for i, frame in enumerate(frames):  # half the per-key attention on every earlier key
        halved[i, ..., :frame] = 0.5 / (frame + 1)
        halved[i, ..., frame] = 1 - 0.5 * frame / (frame + 1)
    assert earlier_key_nats(halved, frames).item() == pytest.approx(math.log(0.5))
    own = torch.zeros(2, 1, 1, 4)
    own[0, ..., 2], own[1, ..., 3] = 1, 1
    assert earlier_key_nats(own, frames).item() == -math.inf


def test_a_layers_finding2_numbers_do_not_depend_on_the_other_layers_probed(tiny_model, tmp_path):
    video = VideoBenchmark("val", frames=4, size=16).clip(0)
    tables = {}
    for name, layers in (("alone", [2]), ("all", "all")):
        with Probe(tiny_model, layers, capture=("attention",)) as probe:
            generate(tiny_model, video[:2], 2, steps=4, seed=0)
        run = load_run(probe.save(tmp_path / name))
        tables[name] = (attention_measures(run).set_index("layer").loc[2],
                        measures_by_head(run).set_index(["layer", "head"]).loc[2])
    for column in ("per_key_ratio", "excess_share", "earlier_key_nats", "lit_share", "earlier_share"):
        assert tables["alone"][0][column] == tables["all"][0][column], column
    assert tables["alone"][1].equals(tables["all"][1])


def test_every_clip_of_a_sweep_draws_its_own_noise():
    assert [noise_seed(0, clip) for clip in range(4)] == [0, 1, 2, 3]
    assert noise_seed(5, 3, 1) == 8 + DRAW_STRIDE
    seeds = {noise_seed(7, clip, draw) for clip in range(100) for draw in range(4)}
    assert len(seeds) == 400  # no two (clip, draw) share their noise


def test_functional_fit_by_hand():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6, 6))
    arrays = []
    for _ in range(4):  # 4 clips, [F=2, S=3, N=20, D=6]: the last step a linear map of step 0, step 1 unrelated
        x = rng.normal(size=(2, 3, 20, 6))
        x[:, 2] = x[:, 0] @ weights
        arrays.append(x)
    groups = np.arange(4)
    linear = held_out_r2(arrays, groups, 0, 2)
    unrelated = held_out_r2(arrays, groups, 1, 2)
    assert min(linear.values()) > 0.99 and max(unrelated.values()) < 0.1 and len(linear) == 4
    assert step_grid(50) == [0, 10, 20, 29, 39]
    # out of sample: R^2 about the training clips' mean (issue 45). Sources unrelated to targets that sit at a clip's
    # own offset: the map predicts about the training mean, so R^2 is about 0; about the held-out clip's own mean,
    # as before issue 45, the same predictions would score far below 0 (the offset counted as error only)
    sources = [rng.normal(size=(50, 4)) for _ in range(4)]
    targets = [rng.normal(size=(50, 3)) + 3.0 * c for c in range(4)]
    scores = held_out_pairs(sources, targets, groups)
    assert all(abs(v) < 0.3 for v in scores.values()), scores
    train = np.concatenate(targets[1:])
    own_mean = 1 - ((targets[0] - train.mean(0)) ** 2).sum() / ((targets[0] - targets[0].mean(0)) ** 2).sum()
    assert own_mean < -5  # the old definition's view of a prediction at the training mean


def test_permuted_weights_keep_each_tensors_values_and_change_their_order(tiny_model):
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    record = permute_weights(tiny_model, seed=3)
    assert record["kind"] == "permuted" and record["seed"] == 3 and record["tensors"] == len(before)
    changed = 0
    for name, p in tiny_model.named_parameters():
        assert torch.equal(p.detach().flatten().sort().values, before[name].flatten().sort().values)
        changed += not torch.equal(p, before[name])
    assert changed >= len(before) - 2  # every tensor of more than one distinct value is reordered
    again = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    for name, p in tiny_model.named_parameters():
        p.data.copy_(before[name])
    permute_weights(tiny_model, seed=3)
    assert all(torch.equal(p, again[name]) for name, p in tiny_model.named_parameters())  # the seed fixes it
    with pytest.raises(ValueError, match="accepted"):
        permute_weights(tiny_model, seed=-1)
