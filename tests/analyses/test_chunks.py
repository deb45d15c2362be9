"""The uniform level of the attention measures comes from the mask applied: with chunks of frames denoised together
(chunk-causal attention), a frame also sees the later frames of its chunk, and its whole chunk is its own: "earlier"
is before the chunk (the paper leaves the current block out of its maps)."""

import pytest
import torch

from analyses.errors import AnalysisError
from analyses.sparsity import earlier_share, excess_share, frames_visible


def _uniform(frames: list[int], visible: list[int], total: int) -> torch.Tensor:
    """[F, 1, 1, T]: each frame's attention spread evenly over the frames it sees."""
    mass = torch.zeros(len(frames), 1, 1, total, dtype=torch.float64)
    for i, v in enumerate(visible):
        mass[i, ..., :v] = 1 / v
    return mass


def test_frames_visible_by_hand():
    # chunks of 3 from frame 0: frames 3, 4, 5 form the second chunk and each sees frames 0..5
    assert frames_visible([3, 4, 5, 6], "causal", 3) == [6, 6, 6, 9]
    assert frames_visible([3, 4], "causal", 1) == [4, 5]
    assert frames_visible([3, 4], "frame-local", 1) == [1, 1]
    assert frames_visible([3, 4], "decoder", 1) == [2, 2]
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(AnalysisError):
            frames_visible([3], "causal", bad)


def test_uniform_attention_over_a_chunk_has_no_excess():
    frames = [3, 4, 5]
    mass = _uniform(frames, [6, 6, 6], 9)
    # by hand: each frame of the chunk 3..5 puts 3/6 on frames 0..2, before its chunk
    assert earlier_share(mass, frames, "causal", 3).flatten().tolist() == pytest.approx([3 / 6, 3 / 6, 3 / 6])
    assert excess_share(mass, frames, "causal", 3).abs().max() < 1e-12
    # the frame-causal level (f / (f + 1)) reads the same attention as avoiding the past: the old, wrong number
    wrong = excess_share(mass, frames, "causal", 1).flatten().tolist()
    assert wrong == pytest.approx([3 / 6 - 3 / 4, 4 / 6 - 4 / 5, 5 / 6 - 5 / 6])


def test_a_run_s_chunk_size_reaches_the_table(tmp_path):
    """attention_measures of a stored run uses the manifest's chunk size: excess = share before the chunk - its
    uniform level, chunk start / (chunk end + 1)."""
    from analyses.sparsity import attention_measures
    from probes.recording import load_run
    from tests.probes.test_store import _write

    _, attention, _, _ = _write(tmp_path / "run", manifest={"frames": [2, 3], "frames_per_block": 2})
    run = load_run(tmp_path / "run")
    assert run.frames_per_block == 2
    table = attention_measures(run).set_index("layer")
    for layer in (15, 28):
        mass = attention[f"layer{layer}"].double()  # [2 frames, 3 steps, 2 heads, 6]
        by_hand = ((mass[0, ..., :2].sum(-1) - 2 / 4).mean() + (mass[1, ..., :2].sum(-1) - 2 / 4).mean()) / 2
        assert table.loc[layer, "excess_share"] == pytest.approx(float(by_hand), abs=1e-6)
